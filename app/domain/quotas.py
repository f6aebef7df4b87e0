"""Quotas and VLAN id ranges of a project: what a stored limit means, the over-quota
refusal, and which VLAN id a project may use or gets next.

A project's `quotas` maps a quota name (app.domain.tenancy.Quota) to a limit, a count >= 0
(vcpus: vCPUs, memory_mib: MiB); a quota absent from it is unlimited (Neutron's -1, Incus's
unset limits.*). A request that would take usage above a limit is refused with 409
`over-quota`, as Neutron answers an over-quota create (neutron/quota: OverQuota -> 409).

A project's `vlan_ranges` is a list of [first, last] VLAN id pairs (IEEE 802.1Q VIDs,
1-4094, both ends included). A VLAN created without `vlan_id` gets the lowest id of those
ranges that is free on its trunk; a member may only use ids inside them (an admin any id),
as Neutron's network_vlan_ranges bound tenant segmentation ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.domain.errors import Conflict, DomainError, InvalidInput
from app.domain.tenancy import Quota
from app.domain.vlans import VID_MAX, VID_MIN

# ---- quotas ---------------------------------------------------------------------------------


class OverQuota(Conflict):
    """The request would take a quota's usage above its limit (409). The problem names the
    quota, its limit, the usage before the request and what the request asked for."""

    kind = "over-quota"
    title = "Over quota"


class UnreadableQuota(Conflict):
    """A stored limit that is not a count (written by hand): nothing that quota limits is
    created until an admin sets it again (a limit never silently becomes unlimited)."""

    kind = "unreadable-quota"
    title = "A project's quota cannot be read"


UNITS = {Quota.VCPUS: " vCPUs", Quota.MEMORY_MIB: " MiB"}


def limit_of(quotas: object, quota: Quota, project: str) -> int | None:
    """The limit a project's stored `quotas` sets on `quota` (None: unlimited). A stored
    object or value that is not a count is refused (UnreadableQuota) rather than read as
    unlimited."""
    if not isinstance(quotas, Mapping):
        raise UnreadableQuota(
            f"project {project!r}'s quotas are stored as {quotas!r}, not an object; an admin "
            "sets them again",
            quota=quota.value,
        )
    value: Any = quotas.get(quota.value)
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise UnreadableQuota(
            f"project {project!r}'s quota {quota.value!r} is stored as {value!r}, not a count "
            ">= 0; an admin sets it again",
            quota=quota.value,
        )
    return value


def check_quota(quota: Quota, limit: int | None, usage: int, requested: int, project: str) -> None:
    """Refuse (OverQuota) when `requested` more would take `usage` above `limit`. A request
    that asks for nothing more (requested <= 0) passes even where usage is above a limit
    lowered since (it does not make things worse)."""
    if limit is None or requested <= 0 or usage + requested <= limit:
        return
    unit = UNITS.get(quota, "")
    raise OverQuota(
        f"project {project!r} is over its {quota.value} quota: limit {limit}{unit}, "
        f"{usage}{unit} in use, this request asks for {requested}{unit} more",
        quota=quota.value,
        limit=limit,
        usage=usage,
        requested=requested,
    )


# ---- VLAN id ranges -------------------------------------------------------------------------


class VlanIdOutsideRanges(DomainError):
    """A member asked for a VLAN id outside its project's ranges (403: the id exists, the
    caller may not use it)."""

    kind = "vlan-id-outside-ranges"
    status = 403
    title = "VLAN id outside the project's ranges"


class VlanRangesExhausted(Conflict):
    """No id of the project's ranges is free on the trunk (or it has none)."""

    kind = "vlan-ranges-exhausted"
    title = "No free VLAN id in the project's ranges"


class UnreadableRanges(Conflict):
    kind = "unreadable-vlan-ranges"
    title = "A project's VLAN ranges cannot be read"


@dataclass(frozen=True, slots=True)
class VlanRange:
    first: int
    last: int

    def __contains__(self, vid: object) -> bool:
        return isinstance(vid, int) and self.first <= vid <= self.last

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


def vlan_ranges(stored: object, project: str) -> list[VlanRange]:
    """A project's stored `vlan_ranges`, in ascending order. Anything that is not a list of
    [first, last] VIDs with first <= last is refused (UnreadableRanges)."""
    ranges = []
    for pair in stored if isinstance(stored, list) else [stored]:
        if not (
            isinstance(pair, list)
            and len(pair) == 2
            and all(type(v) is int and VID_MIN <= v <= VID_MAX for v in pair)
            and pair[0] <= pair[1]
        ):
            raise UnreadableRanges(
                f"project {project!r}'s vlan_ranges are stored as {stored!r}, not a list of "
                f"[first, last] VLAN ids ({VID_MIN}-{VID_MAX}); an admin sets them again"
            )
        ranges.append(VlanRange(pair[0], pair[1]))
    return sorted(ranges, key=lambda r: (r.first, r.last))


def describe(ranges: Sequence[VlanRange]) -> str:
    return ", ".join(str(r) for r in ranges) if ranges else "none"


def ranges_field(ranges: Sequence[VlanRange]) -> list[list[int]]:
    """The ranges as a problem's `vlan_ranges` member (as stored: [first, last] pairs)."""
    return [[r.first, r.last] for r in ranges]


def check_vid_allowed(vid: int, ranges: Sequence[VlanRange], is_admin: bool, project: str) -> None:
    """A member's `vlan_id` must lie in its project's ranges; an admin may use any id."""
    if is_admin or any(vid in r for r in ranges):
        return
    raise VlanIdOutsideRanges(
        f"VLAN id {vid} is outside project {project!r}'s VLAN ranges ({describe(ranges)}); "
        + (
            "leave vlan_id out to get the next free id of them, or ask an admin for the range"
            if ranges
            else "ask an admin for VLAN ranges (the project's `vlan_ranges`)"
        ),
        vlan_id=vid,
        vlan_ranges=ranges_field(ranges),
    )


def next_free_vid(
    ranges: Sequence[VlanRange], taken: Iterable[int], trunk: str, project: str, is_admin: bool
) -> int:
    """The lowest id of `ranges` (ascending) not in `taken` (the trunk's VIDs). No ranges:
    an admin must give vlan_id (422); a member's project has nothing to draw from (409)."""
    if not ranges and is_admin:
        raise InvalidInput(
            f"project {project!r} has no VLAN ranges to draw an id from: give vlan_id",
            vlan_ranges=[],
        )
    used = set(taken)
    for vlan_range in ranges:
        for vid in range(vlan_range.first, vlan_range.last + 1):
            if vid not in used:
                return vid
    why = (
        f"project {project!r}'s VLAN ranges ({describe(ranges)}) are all taken"
        if ranges
        else f"project {project!r} has no VLAN ranges (an admin sets them)"
    )
    raise VlanRangesExhausted(
        f"no free VLAN id on trunk {trunk!r}: {why}", vlan_ranges=ranges_field(ranges)
    )
