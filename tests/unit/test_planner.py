"""The reconcile planner: desired specs + observed links -> actions. Pure data in and out."""

from __future__ import annotations

from app.domain.links import (
    ActionKind,
    LinkKind,
    LinkSpec,
    ObservedLink,
    changes_for_new_link,
    ownership_mark,
    parse_mark,
    plan,
)

BR = "11111111-1111-1111-1111-111111111111"
TAP = "22222222-2222-2222-2222-222222222222"


def bridge_spec(**kw: object) -> LinkSpec:
    return LinkSpec(id=BR, kind=LinkKind.BRIDGE, name="br0", **kw)  # type: ignore[arg-type]


def tap_spec(**kw: object) -> LinkSpec:
    return LinkSpec(id=TAP, kind=LinkKind.TAP, name="tap1", master="br0", **kw)  # type: ignore[arg-type]


def bridge_link(**kw: object) -> ObservedLink:
    base: dict[str, object] = dict(
        index=2,
        name="br0",
        kind="bridge",
        alias=ownership_mark(LinkKind.BRIDGE, BR),
        up=True,
        stp=False,
        forward_delay_cs=0,
    )
    return ObservedLink(**{**base, **kw})  # type: ignore[arg-type]


def tap_link(**kw: object) -> ObservedLink:
    base: dict[str, object] = dict(
        index=3,
        name="tap1",
        kind="tun",
        alias=ownership_mark(LinkKind.TAP, TAP),
        up=True,
        master_index=2,
        tun_type=2,
        tun_multi_queue=False,
        tun_vnet_hdr=False,
    )
    return ObservedLink(**{**base, **kw})  # type: ignore[arg-type]


def kinds(actions: list) -> dict[str, ActionKind]:  # type: ignore[type-arg]
    return {a.name: a.kind for a in actions}


def test_mark_round_trip_and_foreign_aliases() -> None:
    mark = ownership_mark(LinkKind.TAP, TAP)
    assert parse_mark(mark) == (LinkKind.TAP, TAP)
    for alias in (None, "", "uplink to switch", "kvmnetd:", "kvmnetd:tap:", "kvmnetd:vm:x"):
        assert parse_mark(alias) is None


def test_missing_links_are_created_bridges_before_taps() -> None:
    actions = plan([tap_spec(), bridge_spec()], [])
    assert [(a.name, a.kind) for a in actions] == [
        ("br0", ActionKind.CREATE),
        ("tap1", ActionKind.CREATE),
    ]


def test_everything_in_place_is_settled() -> None:
    actions = plan([bridge_spec(), tap_spec()], [bridge_link(), tap_link()])
    assert kinds(actions) == {"br0": ActionKind.SETTLED, "tap1": ActionKind.SETTLED}


def test_detached_tap_is_reattached_and_brought_up() -> None:
    actions = plan(
        [bridge_spec(), tap_spec()], [bridge_link(), tap_link(master_index=None, up=False)]
    )
    (tap,) = [a for a in actions if a.name == "tap1"]
    assert tap.kind is ActionKind.UPDATE
    assert tap.changes.master == "br0"
    assert tap.changes.set_up


def test_addresses_diff_ignores_ipv6_link_local() -> None:
    spec = bridge_spec(addresses=("192.168.105.1/24",))
    link = bridge_link(addresses=("10.9.9.9/8", "fe80::1/64"))
    (action,) = plan([spec], [link])
    assert action.changes.add_addresses == ("192.168.105.1/24",)
    assert action.changes.remove_addresses == ("10.9.9.9/8",)


def test_bridge_options_drift() -> None:
    (action,) = plan(
        [bridge_spec(stp=False, forward_delay_cs=0)], [bridge_link(stp=True, forward_delay_cs=1500)]
    )
    assert action.kind is ActionKind.UPDATE
    assert action.changes.stp is False
    assert action.changes.forward_delay_cs == 0


def test_tap_flags_need_recreation() -> None:
    actions = plan([bridge_spec(), tap_spec(multi_queue=True)], [bridge_link(), tap_link()])
    assert kinds(actions)["tap1"] is ActionKind.RECREATE


def test_foreign_link_with_our_name_is_a_conflict_and_never_touched() -> None:
    foreign = tap_link(alias=None, kind="bridge")
    actions = plan([bridge_spec(), tap_spec()], [bridge_link(), foreign])
    (tap,) = [a for a in actions if a.name == "tap1"]
    assert tap.kind is ActionKind.CONFLICT
    assert "not managed by kvmnetd" in tap.reason
    # and nothing else targets it
    assert all(a.observed is not foreign or a.kind is ActionKind.CONFLICT for a in actions)


def test_interrupted_create_is_adopted_only_with_the_journal() -> None:
    unmarked = tap_link(alias=None, master_index=None)
    without = plan([bridge_spec(), tap_spec()], [bridge_link(), unmarked])
    assert kinds(without)["tap1"] is ActionKind.CONFLICT
    with_intent = plan([bridge_spec(), tap_spec(create_intent=True)], [bridge_link(), unmarked])
    (tap,) = [a for a in with_intent if a.name == "tap1"]
    assert tap.kind is ActionKind.ADOPT
    assert tap.changes.mark == ownership_mark(LinkKind.TAP, TAP)
    assert tap.changes.master == "br0"


def test_orphans_of_ours_are_swept_foreign_links_are_not() -> None:
    orphan = tap_link(
        name="tap7", index=7, alias="kvmnetd:tap:33333333-3333-3333-3333-333333333333"
    )
    foreign = ObservedLink(index=8, name="eth0", kind=None, alias="uplink")
    unmarked = ObservedLink(index=9, name="tap8", kind="tun", alias=None)
    actions = plan([bridge_spec()], [bridge_link(), orphan, foreign, unmarked])
    assert kinds(actions) == {"br0": ActionKind.SETTLED, "tap7": ActionKind.SWEEP}


def test_deleted_resources_remove_only_their_own_link() -> None:
    actions = plan([bridge_spec(deleted=True), tap_spec(deleted=True)], [bridge_link(), tap_link()])
    assert [(a.name, a.kind) for a in actions] == [
        ("tap1", ActionKind.DELETE),  # taps go before their bridge
        ("br0", ActionKind.DELETE),
    ]
    foreign = tap_link(alias=None)
    (forget,) = [a for a in plan([tap_spec(deleted=True)], [foreign]) if a.name == "tap1"]
    assert forget.kind is ActionKind.FORGET


def test_stale_link_of_ours_under_a_reused_name_is_recreated() -> None:
    stale = tap_link(alias="kvmnetd:tap:44444444-4444-4444-4444-444444444444")
    actions = plan([bridge_spec(), tap_spec()], [bridge_link(), stale])
    assert kinds(actions)["tap1"] is ActionKind.RECREATE


def test_new_link_changes_carry_mark_and_everything() -> None:
    spec = tap_spec(mtu=9000, mac="52:54:00:00:00:01", addresses=("10.0.0.1/24",))
    changes = changes_for_new_link(spec)
    assert changes.mark == spec.mark
    assert (changes.mtu, changes.mac, changes.master, changes.set_up) == (
        9000,
        "52:54:00:00:00:01",
        "br0",
        True,
    )
    assert changes.add_addresses == ("10.0.0.1/24",)


def test_our_link_whose_mark_was_removed_by_hand_is_re_marked() -> None:
    unmarked = tap_link(alias=None)
    (same,) = [
        a
        for a in plan([bridge_spec(), tap_spec(ifindex=3)], [bridge_link(), unmarked])
        if a.name == "tap1"
    ]
    assert same.kind is ActionKind.ADOPT
    assert same.changes.mark == ownership_mark(LinkKind.TAP, TAP)
    (other,) = [
        a
        for a in plan([bridge_spec(), tap_spec(ifindex=99)], [bridge_link(), unmarked])
        if a.name == "tap1"
    ]
    assert other.kind is ActionKind.CONFLICT
