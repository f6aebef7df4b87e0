"""Per-port VLAN membership planning (app.domain.vlan_ports): access and trunk ports, the
bridge's own port, and the default_pvid rule, with plain data."""

from __future__ import annotations

import pytest

from app.domain.errors import InvalidInput
from app.domain.vlan_ports import (
    Membership,
    StepOp,
    VlanStep,
    access_port,
    bridge_self,
    check_vid,
    on_join,
    plan_bridge,
    plan_join,
    plan_port,
    trunk_port,
)

ADD, DEL = StepOp.ADD, StepOp.DEL


@pytest.mark.parametrize("vid", [0, 4095, -1, 5000, True, "10"])
def test_reserved_and_bad_vids_are_refused(vid: object) -> None:
    with pytest.raises(InvalidInput):
        check_vid(vid)  # type: ignore[arg-type]


def test_vid_range_ends_are_usable() -> None:
    assert check_vid(1) == 1
    assert check_vid(4094) == 4094


def test_access_port_is_pvid_untagged() -> None:
    assert access_port(10) == {10: Membership(10, pvid=True, untagged=True)}


def test_trunk_port_tags_its_vlans_and_the_native_one_is_pvid_untagged() -> None:
    assert trunk_port([20, 10], native=30) == {
        20: Membership(20),
        10: Membership(10),
        30: Membership(30, pvid=True, untagged=True),
    }
    assert trunk_port([10]) == {10: Membership(10)}


def test_trunk_refuses_native_vlan_also_tagged_and_duplicates() -> None:
    with pytest.raises(InvalidInput, match="both tagged and the native"):
        trunk_port([10, 20], native=10)
    with pytest.raises(InvalidInput, match="twice"):
        trunk_port([10, 10])


def test_two_pvids_on_one_port_are_refused() -> None:
    desired = {10: Membership(10, pvid=True), 20: Membership(20, pvid=True)}
    with pytest.raises(InvalidInput, match="one PVID"):
        plan_port("tap1", desired, {})


def test_bridge_self_joins_tagged_only_the_host_l3_vlans() -> None:
    assert bridge_self([10]) == {10: Membership(10)}
    assert bridge_self([]) == {}


def test_new_access_port_gets_one_add() -> None:
    assert plan_port("tap1", access_port(10), {}) == [VlanStep(ADD, "tap1", 10, True, True)]


def test_a_port_that_matches_needs_nothing() -> None:
    assert plan_port("tap1", access_port(10), access_port(10)) == []


def test_moving_an_access_port_adds_the_new_pvid_before_removing_the_old() -> None:
    assert plan_port("tap1", access_port(20), access_port(10)) == [
        VlanStep(ADD, "tap1", 20, True, True),
        VlanStep(DEL, "tap1", 10),
    ]


def test_changed_flags_are_re_added() -> None:
    # a trunk whose native VLAN 10 becomes a tagged one: re-add 10 without flags
    assert plan_port("up0", trunk_port([10]), trunk_port([], native=10)) == [
        VlanStep(ADD, "up0", 10, False, False)
    ]


def test_default_pvid_1_is_removed_from_a_joining_port_unless_wanted() -> None:
    assert on_join(1) == {1: Membership(1, pvid=True, untagged=True)}
    assert plan_join("tap1", access_port(10), default_pvid=1) == [
        VlanStep(ADD, "tap1", 10, True, True),
        VlanStep(DEL, "tap1", 1),
    ]
    assert plan_join("tap1", access_port(1), default_pvid=1) == []


def test_default_pvid_7_is_the_one_removed() -> None:
    assert plan_join("up0", trunk_port([10, 20]), default_pvid=7) == [
        VlanStep(ADD, "up0", 10),
        VlanStep(ADD, "up0", 20),
        VlanStep(DEL, "up0", 7),
    ]


def test_default_pvid_0_adds_nothing_so_nothing_is_removed() -> None:
    assert on_join(0) == {}
    steps = plan_join("tap1", access_port(10), default_pvid=0)
    assert steps == [VlanStep(ADD, "tap1", 10, True, True)]
    assert all(step.vid != 0 for step in steps)


def test_plan_bridge_touches_only_named_ports_and_does_self_first() -> None:
    observed = {
        "br0": on_join(1),
        "tap1": on_join(1),
        "foreign0": {5: Membership(5)},
    }
    desired = {"tap1": access_port(10), "br0": bridge_self([10])}
    assert plan_bridge("br0", desired, observed) == [
        VlanStep(ADD, "br0", 10, self_port=True),
        VlanStep(DEL, "br0", 1, self_port=True),
        VlanStep(ADD, "tap1", 10, True, True),
        VlanStep(DEL, "tap1", 1),
    ]


def test_a_port_named_with_no_vlans_loses_them_all() -> None:
    observed = {"tap1": {10: Membership(10, True, True), 20: Membership(20)}}
    assert plan_bridge("br0", {"tap1": {}}, observed) == [
        VlanStep(DEL, "tap1", 10),
        VlanStep(DEL, "tap1", 20),
    ]


def test_a_membership_filed_under_another_vid_is_refused() -> None:
    with pytest.raises(InvalidInput, match="filed under"):
        plan_port("tap1", {10: Membership(20)}, {})


def test_describe_reads_like_bridge_vlan() -> None:
    assert (
        VlanStep(ADD, "tap1", 10, True, True).describe()
        == "bridge vlan add dev tap1 vid 10 pvid untagged"
    )
    assert (
        VlanStep(DEL, "br0", 1, self_port=True).describe() == "bridge vlan del dev br0 vid 1 self"
    )
