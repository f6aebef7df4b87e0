"""app.host.rtnl.dump_addresses (LinkOps.addresses_by_index, read by every DIRTY pass) on
this host's kernel, in a throwaway namespace: the same addresses, by link, as pyroute2's
general decoder read them (the code it replaced), IPv4, IPv6, link-local and a
point-to-point peer included."""

from __future__ import annotations

import time
from collections import defaultdict

from pyroute2 import IPRoute

from app.host import rtnl
from app.host.netns import call_in


def general_reading(netns: str) -> dict[int, list[str]]:
    result: dict[int, list[str]] = defaultdict(list)
    with IPRoute(netns=netns) as ipr:
        for msg in ipr.addr("dump"):
            address = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            result[msg["index"]].append(f"{address}/{msg['prefixlen']}")
    return dict(result)


def wait_for_link_local(netns: str, indexes: tuple[int, ...], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reading = general_reading(netns)
        if all(any(a.startswith("fe80:") for a in reading.get(i, [])) for i in indexes):
            return
        time.sleep(0.05)
    raise AssertionError(f"no link-local address on links {indexes} within {timeout_s} s")


def test_addresses_read_minimally_equal_the_general_decoders(netns: str) -> None:
    with IPRoute(netns=netns) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        ipr.link("add", ifname="a0", kind="veth", peer="a1")
        a0, a1 = ipr.link_lookup(ifname="a0")[0], ipr.link_lookup(ifname="a1")[0]
        ipr.addr("add", index=a0, address="10.61.0.1", prefixlen=24)
        ipr.addr("add", index=a0, address="10.61.1.1", prefixlen=32)
        ipr.addr("add", index=a1, address="10.61.2.1", local="10.61.2.1", prefixlen=32)
        ipr.addr("add", index=a1, address="fd00:61::1", prefixlen=64)
        # a point-to-point peer: IFA_ADDRESS is the peer, IFA_LOCAL ours
        ipr.addr("add", index=a1, local="10.61.3.1", address="10.61.3.2", prefixlen=32)
        for index in (a0, a1):
            ipr.link("set", index=index, state="up")
    # the kernel adds each link's fe80:: address a moment after carrier; read once both exist
    # so the two readings see the same set (CI caught one appearing between them)
    wait_for_link_local(netns, (a0, a1))
    minimal = call_in(netns, rtnl.dump_addresses)
    assert minimal == general_reading(netns)
    assert "10.61.3.1/32" in minimal[a1] and "10.61.3.2/32" not in minimal[a1]
    assert "fd00:61::1/64" in minimal[a1]
    assert {"10.61.0.1/24", "10.61.1.1/32"} <= set(minimal[a0])
