"""The links a VLAN owns, pure: specs built from a VLAN row (app.db.repositories.vlans), the
802.1Q link driver (app.domain.links.vlan, app.host.links.vlan) and how the planner orders,
repairs and sweeps them."""

from __future__ import annotations

import struct
from dataclasses import replace

from app.db.models import Vlan
from app.db.repositories.vlans import VlanWork, vlan_bridge_mac, vlan_link_names, vlan_link_specs
from app.domain.links import ActionKind, LinkKind, ObservedLink, ownership_mark, plan
from app.domain.links.vlan import ETH_P_8021Q, VlanDetails, VlanOptions
from app.domain.vlans import VlanBackend
from app.host.links.vlan import IFLA_VLAN_ID, IFLA_VLAN_PROTOCOL, HostVlanDriver
from app.host.rtnl import RawLink
from app.supervisor.vlans import VlanResult, _observed

VLAN_ID = "6f1c1f0e-1111-4222-8333-944455556666"


def work(backend: VlanBackend, uplink: str | None = "eth1", deleted: bool = False) -> VlanWork:
    return VlanWork(
        id=VLAN_ID,
        name="tenant-b",
        vid=10,
        backend=backend,
        trunk_id="t",
        trunk="br1",
        trunk_mtu=1500,
        uplink=uplink,
        uplink_port=True,
        deleted=deleted,
        generation=1,
        observed_generation=0,
        status="pending",
        status_reason=None,
        never_settled=True,
    )


def observed(spec_kind: LinkKind, name: str, index: int, **fields: object) -> ObservedLink:
    kernel = {"bridge": "bridge", "vlan": "vlan"}[spec_kind]
    return ObservedLink(
        index=index,
        name=name,
        kind=kernel,
        alias=ownership_mark(spec_kind, VLAN_ID),
        up=True,
        **fields,  # type: ignore[arg-type]
    )


def test_bridge_per_vlan_owns_its_bridge_and_the_uplinks_subinterface_in_it() -> None:
    bridge, sub = vlan_link_specs(work(VlanBackend.BRIDGE_PER_VLAN))
    assert (bridge.kind, bridge.name, bridge.id, bridge.mtu) == (
        LinkKind.BRIDGE,
        "br1v10",
        VLAN_ID,
        1500,
    )
    assert bridge.mac == vlan_bridge_mac(VLAN_ID)  # fixed for the VLAN's whole life
    assert (sub.kind, sub.name, sub.parent, sub.master) == (
        LinkKind.VLAN,
        "eth1.10",
        "eth1",
        "br1v10",
    )
    assert sub.options == VlanOptions(vid=10, protocol=ETH_P_8021Q)
    assert sub.mark == f"kvmnetd:vlan:{VLAN_ID}"
    # no uplink: only the bridge
    assert [s.name for s in vlan_link_specs(work(VlanBackend.BRIDGE_PER_VLAN, None))] == ["br1v10"]
    assert vlan_link_names(work(VlanBackend.BRIDGE_PER_VLAN)) == {"br1v10", "eth1.10"}


def test_a_filtering_vlans_l3_interface_exists_only_with_a_network() -> None:
    """`<bridge>.<vid>` carries the network's gateway; without a live network it is planned
    deleted: removed if it is there and ours, nothing to do (FORGET) otherwise."""
    bare = work(VlanBackend.VLAN_FILTERING)
    [absent] = vlan_link_specs(bare)
    assert (absent.kind, absent.name, absent.parent, absent.deleted) == (
        LinkKind.VLAN,
        "br1.10",
        "br1",
        True,
    )
    trunk = ObservedLink(index=2, name="br1", kind="bridge", up=True)
    assert [a.kind for a in plan([absent], [trunk])] == [ActionKind.FORGET]
    ours = observed(LinkKind.VLAN, "br1.10", 5, parent_index=2)
    assert [a.kind for a in plan([absent], [trunk, ours])] == [ActionKind.DELETE]
    networked = replace(bare, gateway="10.93.0.1/24")
    [l3] = vlan_link_specs(networked)
    assert (l3.name, l3.deleted, l3.addresses, l3.options) == (
        "br1.10",
        False,
        ("10.93.0.1/24",),
        VlanOptions(vid=10, protocol=ETH_P_8021Q),
    )
    assert [a.kind for a in plan([l3], [trunk])] == [ActionKind.CREATE]
    # the names a netlink notification is matched against are those of the specs
    assert vlan_link_names(networked) == vlan_link_names(bare) == {"br1.10"}


def test_the_bridge_mac_is_stable_local_and_unicast() -> None:
    mac = vlan_bridge_mac(VLAN_ID)
    assert mac == vlan_bridge_mac(VLAN_ID) != vlan_bridge_mac(VLAN_ID[::-1])
    first = int(mac.split(":")[0], 16)
    assert first & 0x02 and not first & 0x01


def test_created_parent_and_bridge_first_and_removed_children_first() -> None:
    specs = vlan_link_specs(work(VlanBackend.BRIDGE_PER_VLAN))
    uplink = ObservedLink(index=2, name="eth1", kind="veth", up=True)
    actions = plan(specs, [uplink])
    assert [(a.kind, a.name) for a in actions] == [
        (ActionKind.CREATE, "br1v10"),
        (ActionKind.CREATE, "eth1.10"),
    ]
    gone = vlan_link_specs(work(VlanBackend.BRIDGE_PER_VLAN, deleted=True))
    kernel = [
        uplink,
        observed(LinkKind.BRIDGE, "br1v10", 3),
        observed(LinkKind.VLAN, "eth1.10", 4, master_index=3, parent_index=2),
    ]
    assert [(a.kind, a.name) for a in plan(gone, kernel)] == [
        (ActionKind.DELETE, "eth1.10"),
        (ActionKind.DELETE, "br1v10"),
    ]


def test_a_subinterface_with_another_vid_is_recreated_and_a_lost_one_swept() -> None:
    specs = vlan_link_specs(work(VlanBackend.BRIDGE_PER_VLAN))
    bridge = observed(
        LinkKind.BRIDGE,
        "br1v10",
        3,
        mac=vlan_bridge_mac(VLAN_ID),
        mtu=1500,
        stp=False,
        forward_delay_cs=0,
    )
    wrong = observed(
        LinkKind.VLAN,
        "eth1.10",
        4,
        master_index=3,
        parent_index=2,
        details=VlanDetails(vid=11, protocol=ETH_P_8021Q),
    )
    uplink = ObservedLink(index=2, name="eth1", kind="veth", up=True)
    actions = {a.name: a for a in plan(specs, [uplink, bridge, wrong])}
    assert actions["eth1.10"].kind is ActionKind.RECREATE
    assert "VLAN id 11" in actions["eth1.10"].reason
    right = observed(
        LinkKind.VLAN,
        "eth1.10",
        4,
        master_index=3,
        parent_index=2,
        details=VlanDetails(vid=10, protocol=ETH_P_8021Q),
    )
    assert {a.name: a.kind for a in plan(specs, [uplink, bridge, right])} == {
        "br1v10": ActionKind.SETTLED,
        "eth1.10": ActionKind.SETTLED,
    }
    # the VLAN's row is gone: its marked links are orphans; a foreign VLAN link is not
    foreign = ObservedLink(index=9, name="eth1.20", kind="vlan", up=True)
    swept = plan([], [uplink, bridge, right, foreign])
    assert [(a.kind, a.name) for a in swept] == [
        (ActionKind.SWEEP, "eth1.10"),
        (ActionKind.SWEEP, "br1v10"),
    ]


def test_the_host_driver_decodes_vid_and_protocol() -> None:
    raw = RawLink(
        event="new",
        index=4,
        flags=1,
        name="eth1.10",
        mtu=1500,
        master=3,
        alias=None,
        mac=None,
        kind="vlan",
        info={IFLA_VLAN_ID: struct.pack("=H", 10), IFLA_VLAN_PROTOCOL: struct.pack("!H", 0x88A8)},
        link=2,
    )
    assert HostVlanDriver().observe(raw) == {"details": VlanDetails(vid=10, protocol=0x88A8)}


def test_a_subinterface_left_by_an_uplink_that_went_is_swept() -> None:
    """The VLAN still exists (its bridge is wanted) but its trunk has no uplink any more:
    the marked sub-interface no spec names is swept, the bridge stays."""
    specs = vlan_link_specs(work(VlanBackend.BRIDGE_PER_VLAN, uplink=None))
    bridge = observed(
        LinkKind.BRIDGE,
        "br1v10",
        3,
        mac=vlan_bridge_mac(VLAN_ID),
        mtu=1500,
        stp=False,
        forward_delay_cs=0,
    )
    sub = observed(LinkKind.VLAN, "eth1.10", 4, master_index=3, parent_index=2)
    assert [(a.kind, a.name) for a in plan(specs, [bridge, sub])] == [
        (ActionKind.SWEEP, "eth1.10"),
        (ActionKind.SETTLED, "br1v10"),
    ]
    # a VLAN whose row cannot be read keeps everything
    assert [a.kind for a in plan([], [bridge, sub], keep_ids=[VLAN_ID])] == []


def test_a_membership_only_result_keeps_what_was_observed_of_the_vlans_links() -> None:
    """A pass over a drifted filtering trunk alone runs the membership step, never the link
    pass: the VLAN's L3 interface `<bridge>.<vid>` keeps its last observation (its ifindex,
    its state), the memberships are the step's; a link the VLAN no longer owns (its network
    gone) is not kept; a result of the link pass replaces everything."""
    networked = replace(work(VlanBackend.VLAN_FILTERING), gateway="10.93.0.1/24")
    row = Vlan(
        observed_objects=[
            {"kind": "bridge_vlan", "name": "eth1", "state": "absent"},
            {"kind": "vlan", "name": "br1.10", "ifindex": 7, "state": "up"},
            {"kind": "vlan", "name": "stale.10", "ifindex": 8, "state": "up"},
        ]
    )
    members = [
        {"kind": "bridge_vlan", "name": "eth1", "state": "present"},
        {"kind": "bridge_vlan", "name": "br1", "state": "present"},
    ]
    kept = _observed(row, networked, VlanResult(True, members, links_seen=False))
    assert kept == [*members, {"kind": "vlan", "name": "br1.10", "ifindex": 7, "state": "up"}]
    bare = work(VlanBackend.VLAN_FILTERING)
    assert _observed(row, bare, VlanResult(True, members[:1], links_seen=False)) == members[:1]
    assert _observed(row, networked, VlanResult(True, members)) == members
