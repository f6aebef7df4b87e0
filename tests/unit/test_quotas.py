"""app.domain.quotas: what a stored limit means, the over-quota arithmetic, and which VLAN
id a project may use or gets next (plain data)."""

from __future__ import annotations

import pytest

from app.domain.errors import InvalidInput
from app.domain.quotas import (
    OverQuota,
    UnreadableQuota,
    UnreadableRanges,
    VlanIdOutsideRanges,
    VlanRange,
    VlanRangesExhausted,
    check_quota,
    check_vid_allowed,
    limit_of,
    next_free_vid,
    vlan_ranges,
)
from app.domain.tenancy import Quota


def test_a_limit_is_a_count_and_absent_is_unlimited() -> None:
    assert limit_of({"vms": 3}, Quota.VMS, "p") == 3
    assert limit_of({"vms": 0}, Quota.VMS, "p") == 0
    assert limit_of({"vms": 3}, Quota.TAPS, "p") is None
    assert limit_of({"vms": None}, Quota.VMS, "p") is None
    for bad in (-1, 1.5, "3", True, [3]):
        with pytest.raises(UnreadableQuota):
            limit_of({"vms": bad}, Quota.VMS, "p")
    with pytest.raises(UnreadableQuota):
        limit_of("garbage", Quota.VMS, "p")


def test_over_quota_names_quota_limit_usage_and_what_was_asked() -> None:
    check_quota(Quota.VCPUS, 4, 2, 2, "p")  # exactly at the limit
    check_quota(Quota.VCPUS, None, 100, 100, "p")  # unlimited
    check_quota(Quota.VCPUS, 1, 5, 0, "p")  # above a lowered limit, asking nothing more
    with pytest.raises(OverQuota) as caught:
        check_quota(Quota.MEMORY_MIB, 1024, 768, 512, "acme")
    assert caught.value.status == 409 and caught.value.kind == "over-quota"
    assert caught.value.extra == {
        "quota": "memory_mib",
        "limit": 1024,
        "usage": 768,
        "requested": 512,
    }
    assert "1024 MiB" in caught.value.detail and "'acme'" in caught.value.detail


def test_ranges_are_read_in_ascending_order_and_garbage_is_refused() -> None:
    assert vlan_ranges([[100, 199], [10, 10]], "p") == [VlanRange(10, 10), VlanRange(100, 199)]
    assert vlan_ranges([], "p") == []
    for bad in ([[0, 5]], [[5, 4095]], [[9, 5]], [[5]], [["5", 6]], {"a": 1}, [[True, 5]]):
        with pytest.raises(UnreadableRanges):
            vlan_ranges(bad, "p")


def test_the_next_free_id_is_the_lowest_of_the_ranges() -> None:
    ranges = [VlanRange(10, 12), VlanRange(100, 100)]
    assert next_free_vid(ranges, set(), "br0", "p", False) == 10
    assert next_free_vid(ranges, {10, 11, 200}, "br0", "p", False) == 12
    assert next_free_vid(ranges, {10, 11, 12}, "br0", "p", True) == 100
    with pytest.raises(VlanRangesExhausted) as caught:
        next_free_vid(ranges, {10, 11, 12, 100}, "br0", "p", False)
    assert caught.value.extra["vlan_ranges"] == [[10, 12], [100, 100]]
    with pytest.raises(VlanRangesExhausted):
        next_free_vid([], set(), "br0", "p", False)  # a member's project without ranges
    with pytest.raises(InvalidInput, match="give vlan_id"):
        next_free_vid([], set(), "br0", "p", True)  # an admin: say which


def test_a_members_id_must_lie_in_the_ranges_an_admins_anywhere() -> None:
    ranges = [VlanRange(10, 12)]
    check_vid_allowed(12, ranges, False, "p")
    check_vid_allowed(4000, ranges, True, "p")
    check_vid_allowed(4000, [], True, "p")
    with pytest.raises(VlanIdOutsideRanges) as caught:
        check_vid_allowed(13, ranges, False, "p")
    assert caught.value.status == 403 and "10-12" in caught.value.detail
    with pytest.raises(VlanIdOutsideRanges, match="none"):
        check_vid_allowed(10, [], False, "p")
