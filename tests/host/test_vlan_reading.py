"""VlanOps.memberships on this host's kernel (bridges without VLAN filtering: every port is
listed with no VLAN) in a throwaway namespace: the minimal dump (app.host.rtnl) is read in
the namespace the VlanOps was opened for, not the caller's, and matches pyroute2's general
reading. VLANs themselves are proven on Debian's kernel (tests/kernel/nested/test_vlan_host.py).
"""

from __future__ import annotations

from pyroute2 import IPRoute

from app.host.vlans import VlanOps
from tests.kernel.nested.test_vlan_host import general_reading


def test_memberships_are_read_in_the_ops_namespace_like_the_general_reading(netns: str) -> None:
    with IPRoute(netns=netns) as ipr:
        for bridge in ("br0", "br1"):
            ipr.link("add", ifname=bridge, kind="bridge")
        for port, bridge in (("p1", "br0"), ("p2", "br0"), ("q1", "br1")):
            ipr.link("add", ifname=port, kind="veth", peer=f"{port}x")
            master = ipr.link_lookup(ifname=bridge)[0]
            ipr.link("set", index=ipr.link_lookup(ifname=port)[0], master=master, state="up")
    with VlanOps(netns) as ops:
        first = ops.memberships("br0")
        assert first == general_reading(ops, "br0")
        assert set(first) >= {"p1", "p2"} and "q1" not in first
        assert ops.memberships("br1") == general_reading(ops, "br1")
        assert ops.memberships("br0") == first  # the socket, reused
