"""app.host.vlans on a kernel that has 802.1Q and bridge VLAN filtering (Debian's own, booted
by the kernel test tier): sub-interfaces, VLAN-aware bridges, trunks, the default_pvid rule,
the bridge's own port on a VLAN, the FDB's VLANs and a per-VLAN bridge, each proven by frames
between throwaway namespaces (busybox ping) and by reading the kernel back.

Topology of most tests: namespace `sw` holds the bridge; each endpoint is a namespace joined to
it by a veth pair (`<port>` in `sw`, `eth0` in the endpoint).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from app.domain.vlan_ports import (
    Membership,
    StepOp,
    VlanStep,
    access_port,
    bridge_self,
    on_join,
    plan_bridge,
    plan_join,
    trunk_port,
)
from app.host.vlans import FeatureMissing, VlanError, VlanOps
from tests.netns_tools import throwaway_netns

# Inside the nested host KVT_NESTED=1; on the host the tier's plugin (tests/kernel/conftest.py)
# turns every test here into a proxy that runs it there. Without that plugin, nothing here
# could run on this host's kernel.
_TIER_PLUGIN = Path(__file__).resolve().parents[1] / "conftest.py"
if os.environ.get("KVT_NESTED") != "1" and not _TIER_PLUGIN.is_file():
    pytest.skip(
        "runs only inside the nested Debian kernel of the kernel test tier (tests/kernel)",
        allow_module_level=True,
    )


@pytest.fixture
def sw() -> Iterator[str]:
    with throwaway_netns() as name:
        yield name


def _index(ipr: IPRoute, name: str) -> int:
    return int(ipr.link_lookup(ifname=name)[0])


def make_bridge(sw: str, name: str = "br0", **options: int) -> None:
    with IPRoute(netns=sw) as ipr:
        ipr.link("add", ifname=name, kind="bridge", br_stp_state=0, **options)
        ipr.link("set", index=_index(ipr, name), state="up")


def veth_to(sw: str, ns: str, port: str, cidr: str | None, master: str | None) -> None:
    """A veth pair: `port` in `sw` (on bridge `master` when given), `eth0` in `ns` with
    `cidr`; both up."""
    with IPRoute(netns=sw) as ipr:
        ipr.link("add", ifname=port, kind="veth", peer={"ifname": "eth0", "net_ns_fd": ns})
        attrs: dict[str, object] = {"state": "up"}
        if master is not None:
            attrs["master"] = _index(ipr, master)
        ipr.link("set", index=_index(ipr, port), **attrs)
    with IPRoute(netns=ns) as ipr:
        index = _index(ipr, "eth0")
        ipr.link("set", index=index, state="up")
        if cidr is not None:
            address, prefix = cidr.split("/")
            ipr.addr("add", index=index, address=address, prefixlen=int(prefix))


def add_address(ns: str, ifname: str, cidr: str) -> None:
    with IPRoute(netns=ns) as ipr:
        address, prefix = cidr.split("/")
        index = _index(ipr, ifname)
        ipr.addr("add", index=index, address=address, prefixlen=int(prefix))
        ipr.link("set", index=index, state="up")


def pings(ns: str, address: str, tries: int = 3) -> bool:
    """ICMP echo from `ns` to `address` (busybox ping), `tries` attempts of 2 s."""
    for _ in range(tries):
        done = subprocess.run(
            ["ip", "netns", "exec", ns, "busybox", "ping", "-c", "1", "-W", "2", address],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
            check=False,
        )
        if done.returncode == 0:
            return True
    return False


@contextlib.contextmanager
def namespaces(count: int) -> Iterator[list[str]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(throwaway_netns()) for _ in range(count)]


def kernel_vlan(ns: str, name: str) -> tuple[str, int, int]:
    """(kind, VLAN id, parent index) of link `name`, read with pyroute2 directly."""
    with IPRoute(netns=ns) as ipr:
        msg = ipr.link("get", ifname=name)[0]
    info = msg.get_attr("IFLA_LINKINFO")
    data = info.get_attr("IFLA_INFO_DATA")
    return info.get_attr("IFLA_INFO_KIND"), data.get_attr("IFLA_VLAN_ID"), msg.get_attr("IFLA_LINK")


def bridge_vlan_show(ns: str) -> dict[str, dict[int, set[str]]]:
    """`bridge -j vlan show` (iproute2, independent of the code under test): port ->
    VLAN id -> flags ("PVID", "Egress Untagged")."""
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "bridge", "-j", "vlan", "show"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return {
        port["ifname"]: {v["vlan"]: set(v.get("flags", [])) for v in port.get("vlans", [])}
        for port in json.loads(out or "[]")
    }


# ---- sub-interfaces -----------------------------------------------------------------------


def test_subinterface_created_read_back_and_removed_idempotently(sw: str) -> None:
    with IPRoute(netns=sw) as ipr:
        ipr.link("add", ifname="up0", kind="veth", peer="up1")
        parent = _index(ipr, "up0")
    with VlanOps(sw) as ops:
        made = ops.ensure_subinterface("up0.10", "up0", 10)
        # its parent is down: it stays down, and comes up with the parent (vlan_device_event)
        assert (made.parent_index, made.vid, made.protocol, made.up) == (
            parent,
            10,
            "802.1Q",
            False,
        )
        with IPRoute(netns=sw) as ipr:
            ipr.link("set", index=parent, state="up")
        made = ops.ensure_subinterface("up0.10", "up0", 10)
        assert made.up
        assert kernel_vlan(sw, "up0.10") == ("vlan", 10, parent)
        again = ops.ensure_subinterface("up0.10", "up0", 10)
        assert again.index == made.index  # kept, not re-created
        with pytest.raises(VlanError) as wrong:
            ops.ensure_subinterface("up0.10", "up0", 20)
        assert wrong.value.code == errno.EEXIST
        assert kernel_vlan(sw, "up0.10") == ("vlan", 10, parent)  # left as it was
        with pytest.raises(VlanError) as foreign:
            ops.absent_subinterface("up1")  # a veth: never ours to remove as a VLAN
        assert foreign.value.code == errno.EEXIST
        with pytest.raises(VlanError) as orphan:
            ops.ensure_subinterface("nope0.10", "nope0", 10)
        assert orphan.value.code == errno.ENODEV
        ops.absent_subinterface("up0.10")
        assert ops.subinterface("up0.10") is None
        ops.absent_subinterface("up0.10")
    with IPRoute(netns=sw) as ipr:
        assert ipr.link_lookup(ifname="up0.10") == []
        assert ipr.link_lookup(ifname="up1") != []


# ---- a VLAN-filtering bridge --------------------------------------------------------------


def test_access_ports_same_vlan_reach_each_other_and_not_across(sw: str) -> None:
    make_bridge(sw)
    with VlanOps(sw) as ops, namespaces(3) as (a, b, c):
        assert ops.set_bridge_vlan_options("br0", filtering=True).filtering
        for ns, port, last in ((a, "pa", 1), (b, "pb", 2), (c, "pc", 3)):
            veth_to(sw, ns, port, f"10.0.0.{last}/24", "br0")
        desired = {"pa": access_port(10), "pb": access_port(10), "pc": access_port(20)}
        ops.apply("br0", plan_bridge("br0", desired, ops.memberships("br0")))
        seen = ops.memberships("br0")
        assert {port: seen[port] for port in desired} == desired
        shown = bridge_vlan_show(sw)
        assert shown["pa"] == shown["pb"] == {10: {"PVID", "Egress Untagged"}}
        assert shown["pc"] == {20: {"PVID", "Egress Untagged"}}
        assert pings(a, "10.0.0.2")
        assert not pings(c, "10.0.0.1", tries=1)
        assert not pings(b, "10.0.0.3", tries=1)
        # the FDB learned a's MAC on pa in VLAN 10, and nowhere in VLAN 20
        with IPRoute(netns=a) as ipr:
            mac_a = ipr.link("get", ifname="eth0")[0].get_attr("IFLA_ADDRESS")
        learned = [e for e in ops.fdb("br0") if e.mac == mac_a]
        assert [(e.port, e.vid, e.local, e.static) for e in learned] == [("pa", 10, False, False)]
        assert plan_bridge("br0", desired, ops.memberships("br0")) == []
        # drift: a membership removed by hand is planned back, and b is reachable again
        subprocess.run(
            ["ip", "netns", "exec", sw, "bridge", "vlan", "del", "dev", "pb", "vid", "10"],
            stdin=subprocess.DEVNULL,
            check=True,
            timeout=30,
        )
        assert not pings(a, "10.0.0.2", tries=1)
        repair = plan_bridge("br0", desired, ops.memberships("br0"))
        assert [s.describe() for s in repair] == ["bridge vlan add dev pb vid 10 pvid untagged"]
        ops.apply("br0", repair)
        assert pings(a, "10.0.0.2")


def test_trunk_port_carries_tagged_vlans_to_subinterfaces(sw: str) -> None:
    make_bridge(sw, br_vlan_filtering=1)
    with VlanOps(sw) as ops, namespaces(4) as (a, d, n, far):
        veth_to(sw, a, "pa", "10.0.10.2/24", "br0")
        veth_to(sw, d, "pd", "10.0.20.2/24", "br0")
        veth_to(sw, n, "pn", "10.0.30.2/24", "br0")
        veth_to(sw, far, "up0", "10.0.30.1/24", "br0")  # untagged: the native VLAN 30
        with VlanOps(far) as far_ops:
            far_ops.ensure_subinterface("eth0.10", "eth0", 10)
            far_ops.ensure_subinterface("eth0.20", "eth0", 20)
        add_address(far, "eth0.10", "10.0.10.1/24")
        add_address(far, "eth0.20", "10.0.20.1/24")
        desired = {
            "pa": access_port(10),
            "pd": access_port(20),
            "pn": access_port(30),
            "up0": trunk_port([10, 20], native=30),
        }
        ops.apply("br0", plan_bridge("br0", desired, ops.memberships("br0")))
        assert ops.memberships("br0")["up0"] == {
            10: Membership(10),
            20: Membership(20),
            30: Membership(30, pvid=True, untagged=True),
        }
        assert bridge_vlan_show(sw)["up0"] == {
            10: set(),
            20: set(),
            30: {"PVID", "Egress Untagged"},
        }
        assert pings(a, "10.0.10.1")
        assert pings(d, "10.0.20.1")
        assert pings(n, "10.0.30.1")
        # the fault: a trunk that lacks a VID drops that VLAN's tagged frames
        ops.apply("br0", plan_bridge("br0", {"up0": trunk_port([10])}, ops.memberships("br0")))
        assert not pings(d, "10.0.20.1", tries=1)
        assert not pings(n, "10.0.30.1", tries=1)  # and the native VLAN went with it
        assert pings(a, "10.0.10.1")


@pytest.mark.parametrize("default_pvid", [0, 7])
def test_attaching_a_port_works_with_default_pvid(sw: str, default_pvid: int) -> None:
    make_bridge(sw)
    with VlanOps(sw) as ops, namespaces(1) as (a,):
        options = ops.set_bridge_vlan_options("br0", filtering=True, default_pvid=default_pvid)
        assert (options.filtering, options.default_pvid) == (True, default_pvid)
        veth_to(sw, a, "pa", None, "br0")
        assert ops.memberships("br0")["pa"] == on_join(default_pvid)  # the kernel's doing
        steps = plan_join("pa", access_port(10), default_pvid)
        ops.apply("br0", steps)
        assert ops.memberships("br0")["pa"] == access_port(10)
        assert [s.vid for s in steps if s.op is StepOp.DEL] == ([] if default_pvid == 0 else [7])


def test_bridge_address_on_a_vlan_answers_only_once_self_joins(sw: str) -> None:
    make_bridge(sw)
    with VlanOps(sw) as ops, namespaces(1) as (a,):
        ops.set_bridge_vlan_options("br0", filtering=True)
        veth_to(sw, a, "pa", "10.0.10.2/24", "br0")
        ops.ensure_subinterface("br0.10", "br0", 10)
        add_address(sw, "br0.10", "10.0.10.1/24")
        ops.apply("br0", plan_bridge("br0", {"pa": access_port(10)}, ops.memberships("br0")))
        # the classic fault: filtering on, the bridge's own port is not in VLAN 10
        assert not pings(a, "10.0.10.1", tries=1)
        desired = {"br0": bridge_self([10])}
        steps = plan_bridge("br0", desired, ops.memberships("br0"))
        assert [s.describe() for s in steps] == [
            "bridge vlan add dev br0 vid 10 self",
            "bridge vlan del dev br0 vid 1 self",  # the bridge's own default PVID
        ]
        ops.apply("br0", steps)
        assert ops.memberships("br0")["br0"] == {10: Membership(10)}
        assert bridge_vlan_show(sw)["br0"] == {10: set()}
        assert pings(a, "10.0.10.1")


def test_static_fdb_entries_carry_their_vlan(sw: str) -> None:
    make_bridge(sw, br_vlan_filtering=1)
    with VlanOps(sw) as ops, namespaces(1) as (a,):
        veth_to(sw, a, "pa", None, "br0")
        ops.apply("br0", plan_bridge("br0", {"pa": trunk_port([10, 20])}, {}))
        mac = "02:00:00:00:10:01"
        ops.fdb_add("br0", "pa", mac, 20)
        ops.fdb_add("br0", "pa", mac, 20)  # idempotent
        mine = [(e.port, e.vid, e.static, e.local) for e in ops.fdb("br0") if e.mac == mac]
        assert mine == [("pa", 20, True, False)]
        local = [e for e in ops.fdb("br0") if e.local and e.port == "pa"]
        assert {e.vid for e in local} >= {10, 20}  # the port's own MAC, once per VLAN
        ops.fdb_del("br0", "pa", mac, 20)
        ops.fdb_del("br0", "pa", mac, 20)
        assert [e for e in ops.fdb("br0") if e.mac == mac] == []
        with pytest.raises(VlanError, match="VLAN 30 is not configured on pa"):
            ops.fdb_add("br0", "pa", mac, 30)
        with pytest.raises(VlanError) as stranger:
            ops.vlan_add("br0", "eth-none", 10)
        assert stranger.value.code == errno.ENODEV


def test_vlan_on_a_link_of_no_bridge_is_refused_with_the_reason(sw: str) -> None:
    make_bridge(sw, br_vlan_filtering=1)
    with IPRoute(netns=sw) as ipr:
        ipr.link("add", ifname="lone0", kind="veth", peer="lone1")
    with VlanOps(sw) as ops:
        with pytest.raises(VlanError, match="not a port of br0") as err:
            ops.vlan_add("br0", "lone0", 10)
        assert err.value.code == errno.EINVAL
        assert not isinstance(err.value, FeatureMissing)
        with pytest.raises(VlanError, match="not a bridge"):
            ops.memberships("lone0")


# ---- bridge per VLAN ----------------------------------------------------------------------


def test_per_vlan_bridge_with_subinterface_reaches_a_tagged_far_end(sw: str) -> None:
    make_bridge(sw, "brv20")
    with VlanOps(sw) as ops, namespaces(2) as (a, far):
        veth_to(sw, far, "up0", None, None)
        with VlanOps(far) as far_ops:
            far_ops.ensure_subinterface("eth0.20", "eth0", 20)
        add_address(far, "eth0.20", "10.0.20.1/24")
        ops.ensure_subinterface("up0.20", "up0", 20)
        with IPRoute(netns=sw) as ipr:
            ipr.link("set", index=_index(ipr, "up0.20"), master=_index(ipr, "brv20"))
        veth_to(sw, a, "pa", "10.0.20.2/24", "brv20")
        assert pings(a, "10.0.20.1")
        # without the sub-interface on the bridge the far end is out of reach
        ops.absent_subinterface("up0.20")
        assert not pings(a, "10.0.20.1", tries=1)


# ---- reading membership -------------------------------------------------------------------


def general_reading(ops: VlanOps, bridge: str) -> dict[str, dict[int, Membership]]:
    """The reading VlanOps.memberships replaced: pyroute2's `get_vlans()` (RTEXT_FILTER_BRVLAN,
    one entry per VID) through its general decoder."""
    index = ops.bridge_index(bridge)
    result: dict[str, dict[int, Membership]] = {}
    for msg in ops.ipr.get_vlans():
        if msg.get_attr("IFLA_MASTER") != index and msg["index"] != index:
            continue
        spec = msg.get_attr("IFLA_AF_SPEC")
        infos = () if spec is None else spec.get_attrs("IFLA_BRIDGE_VLAN_INFO")
        result[msg.get_attr("IFLA_IFNAME")] = {
            int(i["vid"]): Membership(int(i["vid"]), bool(i["flags"] & 2), bool(i["flags"] & 4))
            for i in infos
        }
    return result


def test_memberships_read_minimally_equal_the_general_decoders_and_iproute2s(sw: str) -> None:
    make_bridge(sw, "br0", br_vlan_filtering=1)
    make_bridge(sw, "br1", br_vlan_filtering=1)
    with IPRoute(netns=sw) as ipr:
        for port, master in (("p1", "br0"), ("p2", "br0"), ("p3", "br0"), ("q1", "br1")):
            ipr.link("add", ifname=port, kind="veth", peer=f"{port}x")
            ipr.link("set", index=_index(ipr, port), master=_index(ipr, master), state="up")
    with VlanOps(sw) as ops:
        for vid in (10, 11, 12, 20, 4094):  # a range (compressed by the kernel) and gaps
            ops.vlan_add("br0", "p1", vid)
        ops.vlan_add("br0", "p1", 30, pvid=True, untagged=True)  # VID 1 stays, untagged
        for vid in (11, 12, 13):  # an untagged range
            ops.vlan_add("br0", "p2", vid, untagged=True)
        ops.vlan_del("br0", "p3", 1)  # a port left with no VLAN
        ops.vlan_add("br0", "br0", 10)  # the bridge's own port
        ops.vlan_add("br1", "q1", 10)  # another bridge's port: not br0's
        observed = ops.memberships("br0")
        assert observed == general_reading(ops, "br0")
        assert ops.memberships("br1") == general_reading(ops, "br1")
        # steps with the ports' indexes from that dump (no read of each port); a port that
        # left the bridge since is told as no port of it, never as a kernel lacking filtering
        index = ops.bridge_index("br0")
        ports = {p.name: p.index for p in ops.port_vlans(index, "br0") if p.name}
        with IPRoute(netns=sw) as ipr:
            ipr.link("set", index=ports["p2"], master=0)
        add40 = VlanStep(StepOp.ADD, "p3", 40, pvid=True, untagged=True)
        ops.apply("br0", [add40], ports, index)
        assert ops.memberships("br0")["p3"] == {40: Membership(40, True, True)}
        with pytest.raises(VlanError) as left:
            ops.apply("br0", [VlanStep(StepOp.ADD, "p2", 40)], ports, index)
        assert left.value.code == errno.EINVAL and "not a port of br0" in str(left.value)
        ops.apply("br0", [VlanStep(StepOp.DEL, "p3", 40)], ports, index)
        with IPRoute(netns=sw) as ipr:
            ipr.link("set", index=ports["p2"], master=index)
        for vid in (11, 12, 13):  # p2 is back with the default PVID only: untagged range again
            ops.vlan_add("br0", "p2", vid, untagged=True)
        observed = ops.memberships("br0")
        assert observed == general_reading(ops, "br0")
    assert set(observed) == {"br0", "p1", "p2", "p3"}
    assert observed["p3"] == {}
    assert sorted(observed["p1"]) == [1, 10, 11, 12, 20, 30, 4094]
    assert observed["p1"][1] == Membership(1, pvid=False, untagged=True)
    assert observed["p1"][11] == Membership(11)
    assert observed["p1"][30] == Membership(30, pvid=True, untagged=True)
    assert observed["p2"][12] == Membership(12, pvid=False, untagged=True)
    names = {"PVID": "pvid", "Egress Untagged": "untagged"}
    shown = bridge_vlan_show(sw)
    for port, vlans in observed.items():
        flags = {
            m.vid: {n for n, on in (("pvid", m.pvid), ("untagged", m.untagged)) if on}
            for m in vlans.values()
        }
        assert flags == {vid: {names[f] for f in fl} for vid, fl in shown.get(port, {}).items()}, (
            port
        )
