"""Link kind drivers and the planner's ordering by declared dependencies. Pure data in and out.

A stacked kind the daemon does not have yet (a macvtap) is registered here as a test
driver, the way a new kind's module would register itself: the
planner orders it by its parent without knowing anything else about it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from app.domain.links import (
    ActionKind,
    LinkDetails,
    LinkDriver,
    LinkKind,
    LinkSpec,
    ObservedLink,
    find_driver,
    fingerprint,
    order_actions,
    ownership_mark,
    plan,
    plan_link,
    registered,
)


@dataclass(frozen=True)
class VlanDetails(LinkDetails):
    vlan_id: int
    protocol: str


class StackedDriver(LinkDriver):
    """A link on a parent link (IFLA_LINK): the shared base does everything."""

    bridge_port = True

    def __init__(self, kind: str) -> None:
        self.kind = kind  # type: ignore[misc,assignment]
        self.kernel_kind = kind  # type: ignore[misc]


@pytest.fixture
def stacked_kinds() -> Iterator[None]:
    """A "macvtap" driver, registered for this test only (the 802.1Q "vlan" kind is the
    daemon's own, app.domain.links.vlan)."""
    with registered(StackedDriver("macvtap")):
        yield


def spec(name: str, kind: str, **kw: object) -> LinkSpec:
    return LinkSpec(id=f"id-{name}", kind=kind, name=name, **kw)  # type: ignore[arg-type]


def link(name: str, index: int, kind: str, **kw: object) -> ObservedLink:
    """A link of ours; `kind` as the kernel reports it (a tap is a "tun")."""
    mark_kind = "tap" if kind == "tun" else kind
    alias = ownership_mark(mark_kind, f"id-{name}")  # type: ignore[arg-type]
    fields: dict[str, object] = {"alias": alias, "up": True, **kw}
    return ObservedLink(index=index, name=name, kind=kind, **fields)  # type: ignore[arg-type]


# br0 (a bridge) <- br0.10 (its VLAN L3 interface) <- mvt0 (a macvtap on it); tap0 on br0
CHAIN = [
    spec("br0", LinkKind.BRIDGE),
    spec("br0.10", "vlan", parent="br0"),
    spec("mvt0", "macvtap", parent="br0.10"),
    spec("tap0", LinkKind.TAP, master="br0"),
]
OBSERVED = [
    link("br0", 2, "bridge", stp=False, forward_delay_cs=0),
    link("br0.10", 3, "vlan", parent_index=2),
    link("mvt0", 4, "macvtap", parent_index=3),
    link("tap0", 5, "tun", master_index=2, tun_type=2, tun_multi_queue=False),
]


def positions(actions: list) -> dict[str, int]:  # type: ignore[type-arg]
    return {a.name: i for i, a in enumerate(actions)}


@pytest.mark.usefixtures("stacked_kinds")
def test_a_chain_is_created_parents_first_whatever_order_the_specs_come_in() -> None:
    for specs in itertools.permutations(CHAIN):
        actions = plan(list(specs), [])
        assert {a.kind for a in actions} == {ActionKind.CREATE}
        at = positions(actions)
        assert at["br0"] < at["br0.10"] < at["mvt0"], [a.name for a in actions]
        assert at["br0"] < at["tap0"]


@pytest.mark.usefixtures("stacked_kinds")
def test_a_chain_is_deleted_children_first_whatever_order_the_specs_come_in() -> None:
    deleted = [LinkSpec(**{**s.__dict__, "deleted": True}) for s in CHAIN]
    for specs, observed in zip(
        itertools.permutations(deleted), itertools.cycle(itertools.permutations(OBSERVED))
    ):
        actions = plan(list(specs), list(observed))
        assert {a.kind for a in actions} == {ActionKind.DELETE}
        at = positions(actions)
        assert at["mvt0"] < at["br0.10"] < at["br0"], [a.name for a in actions]
        assert at["tap0"] < at["br0"]


# the per-VLAN backend's chain: an 802.1Q sub-interface of a foreign uplink, the bridge that
# uses it, a tap on that bridge
UPLINK = ObservedLink(index=2, name="eth0", kind="veth", up=True)
VLAN_CHAIN = [
    spec("eth0.10", "vlan", parent="eth0"),
    spec("brv10", LinkKind.BRIDGE, parent="eth0.10"),
    spec("tap10", LinkKind.TAP, master="brv10"),
]
VLAN_OBSERVED = [
    link("eth0.10", 3, "vlan", parent_index=2),
    link("brv10", 4, "bridge", stp=False, forward_delay_cs=0),
    link("tap10", 5, "tun", master_index=4, tun_type=2, tun_multi_queue=False),
]


@pytest.mark.usefixtures("stacked_kinds")
def test_parent_link_bridge_tap_created_in_order_and_deleted_in_reverse() -> None:
    created = ["eth0.10", "brv10", "tap10"]
    deleted = [LinkSpec(**{**s.__dict__, "deleted": True}) for s in VLAN_CHAIN]
    for order in itertools.permutations(range(3)):
        specs = [VLAN_CHAIN[i] for i in order]
        assert [(a.name, a.kind) for a in plan(specs, [UPLINK])] == [
            (name, ActionKind.CREATE) for name in created
        ]
        observed = [UPLINK, *(VLAN_OBSERVED[i] for i in order)]
        gone = plan([deleted[i] for i in order], observed)
        assert [(a.name, a.kind) for a in gone] == [
            (name, ActionKind.DELETE) for name in reversed(created)
        ]


@pytest.mark.usefixtures("stacked_kinds")
def test_removals_declared_in_a_cycle_follow_the_kernel_and_are_never_blocked() -> None:
    specs = [
        spec("brv10", LinkKind.BRIDGE, parent="eth0.10", deleted=True),
        spec("eth0.10", "vlan", parent="eth0", master="brv10", deleted=True),
    ]
    observed = [
        UPLINK,
        link("brv10", 4, "bridge"),
        link("eth0.10", 3, "vlan", parent_index=2, master_index=4),  # a port of brv10
    ]
    assert [(a.name, a.kind) for a in plan(specs, observed)] == [
        ("eth0.10", ActionKind.DELETE),
        ("brv10", ActionKind.DELETE),
    ]


@pytest.mark.usefixtures("stacked_kinds")
def test_removals_come_before_creates_and_a_recreated_parent_before_its_children() -> None:
    observed = [
        # a stale link of ours holds br0's name (a RECREATE); br0.10 drifted (an UPDATE)
        link("br0", 2, "bridge", alias="kvmnetd:bridge:stale", stp=False, forward_delay_cs=0),
        link("br0.10", 3, "vlan", parent_index=2, mtu=1400),
        link("old0", 9, "tun", master_index=2, alias="kvmnetd:tap:gone"),  # an orphan
    ]
    specs = [CHAIN[1], CHAIN[0], spec("br1", LinkKind.BRIDGE, deleted=True)]
    specs[0] = spec("br0.10", "vlan", parent="br0", mtu=1500)
    actions = plan(specs, observed)
    assert [(a.name, a.kind) for a in actions] == [
        ("old0", ActionKind.SWEEP),
        ("br1", ActionKind.FORGET),
        ("br0", ActionKind.RECREATE),
        ("br0.10", ActionKind.UPDATE),
    ]


def test_a_stored_kind_without_a_driver_is_reported_on_its_row_only() -> None:
    assert find_driver("vxlan") is None
    actions = plan(
        [
            spec("vx0", "vxlan"),
            spec("br0", LinkKind.BRIDGE),
            spec("tap0", LinkKind.TAP, master="vx0"),
        ],
        [],
    )
    got = {a.name: a for a in actions}
    assert got["vx0"].kind is ActionKind.BLOCKED
    assert "no driver for link kind 'vxlan'" in got["vx0"].reason
    assert got["br0"].kind is ActionKind.CREATE
    assert got["tap0"].kind is ActionKind.BLOCKED  # its master cannot be set up
    assert "'vx0'" in got["tap0"].reason
    # a deleted row of such a kind still takes its marked link away (no driver needed)
    gone = plan_link(
        spec("vx0", "vxlan", deleted=True),
        ObservedLink(index=7, name="vx0", kind="vxlan", alias="kvmnetd:vxlan:id-vx0"),
        {},
    )
    assert gone.kind is ActionKind.DELETE


@pytest.mark.usefixtures("stacked_kinds")
def test_a_dependency_cycle_blocks_its_links_and_nothing_else() -> None:
    actions = plan(
        [
            spec("a.1", "vlan", parent="b.1"),
            spec("b.1", "vlan", parent="a.1"),
            spec("br0", LinkKind.BRIDGE),
            spec("tap0", LinkKind.TAP, master="br0"),
        ],
        [],
    )
    got = {a.name: a for a in actions}
    for name in ("a.1", "b.1"):
        assert got[name].kind is ActionKind.BLOCKED
        assert got[name].reason.startswith("dependency cycle: ")
        assert "a.1" in got[name].reason and "b.1" in got[name].reason
    assert (got["br0"].kind, got["tap0"].kind) == (ActionKind.CREATE, ActionKind.CREATE)
    assert positions(actions)["br0"] < positions(actions)["tap0"]


def test_a_missing_dependency_blocks_only_when_every_link_is_known() -> None:
    orphaned = spec("tap0", LinkKind.TAP, master="br9")
    (full,) = plan([orphaned], [])
    assert full.kind is ActionKind.BLOCKED
    assert full.reason == "depends on link 'br9', which does not exist"
    # a partial pass (links looked up one by one) cannot tell: the host reports it
    (partial,) = order_actions([plan_link(orphaned, None, {})])
    assert partial.kind is ActionKind.CREATE
    # one that exists outside the plan (a bridge nobody asked us for) is fine
    (present,) = plan([orphaned], [ObservedLink(index=4, name="br9", kind="bridge")])
    assert present.kind is ActionKind.CREATE


def test_a_dependency_going_away_or_held_by_a_foreign_link_blocks_its_dependents() -> None:
    tap = spec("tap0", LinkKind.TAP, master="br0")
    going = plan([spec("br0", LinkKind.BRIDGE, deleted=True), tap], [OBSERVED[0]])
    assert [(a.name, a.kind) for a in going] == [
        ("br0", ActionKind.DELETE),
        ("tap0", ActionKind.BLOCKED),
    ]
    assert going[1].reason == "depends on link 'br0', which is being deleted"
    foreign = ObservedLink(index=2, name="br0", kind="bridge", alias=None)
    held = {a.name: a for a in plan([spec("br0", LinkKind.BRIDGE), tap], [foreign])}
    assert held["br0"].kind is ActionKind.CONFLICT
    assert held["tap0"].kind is ActionKind.BLOCKED
    assert "not managed by kvmnetd" in held["tap0"].reason


@pytest.mark.usefixtures("stacked_kinds")
def test_the_fingerprint_watches_each_kinds_own_attributes() -> None:
    bridge = OBSERVED[0]
    assert fingerprint(bridge) != fingerprint(
        ObservedLink(**{**bridge.__dict__, "forward_delay_cs": 1500})
    )
    vlan = link("br0.10", 3, "vlan", parent_index=2, details=VlanDetails(10, "802.1Q"))
    same = link("br0.10", 3, "vlan", parent_index=2, details=VlanDetails(10, "802.1Q"))
    assert fingerprint(vlan) == fingerprint(same)
    for changed in (
        {"details": VlanDetails(20, "802.1Q")},
        {"details": VlanDetails(10, "802.1ad")},
        {"parent_index": 9},
    ):
        assert fingerprint(vlan) != fingerprint(ObservedLink(**{**vlan.__dict__, **changed}))
    # a tap's tun flags never were watched (qemu sets vnet_hdr when it opens the tap)
    tap = OBSERVED[3]
    assert fingerprint(tap) == fingerprint(ObservedLink(**{**tap.__dict__, "tun_vnet_hdr": True}))
