"""Rules of projects and their tokens that need no database: project names, quotas, VLAN id
ranges, shared segments, token expiry and a token's state (who may do what to tokens:
`token_action_refusal`).

Shapes follow Incus projects (limits.*, restricted.*), Neutron/Keystone (project_id, roles,
quotas) and Proxmox API tokens (a secret shown once, an optional expiry, revocation).
"""

from __future__ import annotations

import datetime as dt
import enum
import itertools
import re
from collections.abc import Mapping, Sequence
from typing import Any

from app.domain.errors import DomainError, InvalidInput
from app.domain.tenancy import DEFAULT_PROJECT_ID, Principal, Quota, Role
from app.domain.vlans import VID_MAX, VID_MIN

# A project name is a host name label, as a VM name is (RFC 1123 section 2.1), up to the
# 63 characters a DNS label may have (RFC 1035 section 2.3.4): it names no kernel object.
PROJECT_NAME_MAX = 63
PROJECT_NAME_PATTERN = f"^[A-Za-z0-9](?:[A-Za-z0-9-]{{0,{PROJECT_NAME_MAX - 2}}}[A-Za-z0-9])?$"
_PROJECT_NAME_RE = re.compile(PROJECT_NAME_PATTERN.removeprefix("^").removesuffix("$"))
DESCRIPTION_MAX = 255
QUOTA_MAX = 2**31 - 1  # a limit beyond any host; keeps SQLite's JSON integers small
VLAN_RANGES_MAX = 64
SHARED_SEGMENTS_MAX = 256
# a token lives at most ten years: enough for a service account, and far from datetime.max
TOKEN_LIFETIME_MAX_S = 10 * 366 * 86400
# last_used_at is written at most once per this many seconds per token (in-memory throttle)
LAST_USED_GRANULARITY_S = 60.0


class SharedResource(enum.StrEnum):
    """What a project may be given to share: Neutron's shared networks, as L2 segments
    (bridges, VLANs) or managed networks."""

    BRIDGE = "bridge"
    VLAN = "vlan"
    NETWORK = "network"


class TokenState(enum.StrEnum):
    ACTIVE = "active"
    EXPIRED = "expired"
    REVOKED = "revoked"


def validate_project_name(name: str) -> str:
    """1-63 letters, digits and '-', neither first nor last '-' (a host name label, RFC
    1123, like VM names). Unique without regard to case (the service checks that)."""
    if not isinstance(name, str) or not name:
        raise InvalidInput("a project name must be a non-empty string")
    if len(name) > PROJECT_NAME_MAX:
        raise InvalidInput(
            f"project name {name[:PROJECT_NAME_MAX]!r}... is {len(name)} characters; at most "
            f"{PROJECT_NAME_MAX} are allowed and names are never truncated"
        )
    if not _PROJECT_NAME_RE.fullmatch(name):
        raise InvalidInput(
            f"project name {name!r} must be a host name label (RFC 1123): only letters, "
            "digits and '-', neither first nor last '-'"
        )
    return name


def validate_quotas(quotas: Mapping[str, Any]) -> dict[str, int]:
    """Each key a Quota name, each value an integer 0-QUOTA_MAX or null (unlimited: dropped,
    as an absent key is)."""
    allowed = ", ".join(q.value for q in Quota)
    decided: dict[str, int] = {}
    for key, value in quotas.items():
        if key not in {q.value for q in Quota}:
            raise InvalidInput(f"unknown quota {key!r}; the quotas are: {allowed}")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(f"quota {key!r} must be an integer >= 0 or null (unlimited)")
        if not 0 <= value <= QUOTA_MAX:
            raise InvalidInput(f"quota {key!r} must be 0-{QUOTA_MAX} (null: unlimited)")
        decided[key] = value
    return decided


def validate_vlan_ranges(ranges: Sequence[Sequence[int]]) -> list[list[int]]:
    """[first, last] pairs of VLAN ids, each 1-4094 (0 and 4095 are reserved, IEEE
    802.1Q-2018 9.6), first <= last, no two overlapping; returned sorted by first."""
    pairs: list[list[int]] = []
    for pair in ranges:
        if len(pair) != 2:
            raise InvalidInput(f"a VLAN range is [first, last], got {list(pair)}")
        first, last = pair
        for vid in (first, last):
            if not VID_MIN <= vid <= VID_MAX:
                raise InvalidInput(
                    f"VLAN id {vid} in range {list(pair)} is outside {VID_MIN}-{VID_MAX} "
                    "(0 and 4095 are reserved, IEEE 802.1Q-2018 9.6)"
                )
        if first > last:
            raise InvalidInput(f"VLAN range {list(pair)}: first must be <= last")
        pairs.append([first, last])
    pairs.sort()
    for before, after in itertools.pairwise(pairs):
        if after[0] <= before[1]:
            raise InvalidInput(f"VLAN ranges {before} and {after} overlap")
    return pairs


def token_state(
    expires_at: dt.datetime | None, revoked_at: dt.datetime | None, now: dt.datetime
) -> TokenState:
    """Revoked wins over expired: a revoked token never comes back."""
    if revoked_at is not None:
        return TokenState.REVOKED
    if expires_at is not None and expires_at <= now:
        return TokenState.EXPIRED
    return TokenState.ACTIVE


def expiry(
    expires_at: dt.datetime | None, expires_in_s: int | None, now: dt.datetime
) -> dt.datetime | None:
    """When a new token expires: `expires_at` (in the future, at most
    TOKEN_LIFETIME_MAX_S away) or now + `expires_in_s`; neither: never. Both: refused."""
    if expires_at is not None and expires_in_s is not None:
        raise InvalidInput("send expires_at or expires_in_s, not both")
    if expires_in_s is not None:
        return now + dt.timedelta(seconds=expires_in_s)
    if expires_at is None:
        return None
    if expires_at <= now:
        raise InvalidInput(
            f"expires_at {expires_at.isoformat()} is not in the future (now is {now.isoformat()})"
        )
    if expires_at - now > dt.timedelta(seconds=TOKEN_LIFETIME_MAX_S):
        raise InvalidInput(f"expires_at is more than {TOKEN_LIFETIME_MAX_S} s away (ten years)")
    return expires_at


def may_see_project(principal: Principal, project_id: str) -> bool:
    """An admin sees every project; anyone else only its own (others are 404: their
    existence is not revealed)."""
    return principal.is_admin or principal.project_id == project_id


def token_action_refusal(principal: Principal, role: Role | None = None) -> str | None:
    """Why `principal` may not manage tokens of a project it sees (None: it may). Admins
    may do anything; a member may make and revoke its project's member and reader tokens;
    a reader may do neither. `role`: the role of the token being made or revoked."""
    if principal.is_admin:
        return None
    if principal.role is Role.READER:
        return "a reader token may not manage tokens; ask a member or an admin"
    if role is Role.ADMIN:
        return "only an admin may make admin tokens (a member makes member or reader tokens)"
    return None


def is_default(project_id: str) -> bool:
    return project_id == DEFAULT_PROJECT_ID


class Forbidden(DomainError):
    """The caller sees the object but its role may not do this (a member asking for an
    admin's action, a reader for a member's). Another project's objects are 404 instead."""

    kind = "forbidden"
    status = 403
    title = "Not allowed for this token's role"


# ---- stored values, read defensively ----------------------------------------------------
# The database's CHECK constraints keep each column JSON of the right type (object, array);
# what is inside was decided by the validators above, but a row written by hand or by an
# older version may hold anything. These read what is usable and skip the rest, so a bad
# row is still shown, changed (which rewrites it clean) and deleted.


def stored_quotas(value: Any) -> dict[str, int]:
    """The well-formed limits of a stored `quotas` object."""
    if not isinstance(value, dict):
        return {}
    names = {q.value for q in Quota}
    return {
        key: limit
        for key, limit in value.items()
        if key in names and isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0
    }


def stored_vlan_ranges(value: Any) -> list[list[int]]:
    """The well-formed [first, last] pairs of a stored `vlan_ranges` array."""
    if not isinstance(value, list):
        return []
    return [
        [pair[0], pair[1]]
        for pair in value
        if isinstance(pair, list)
        and len(pair) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
        and VID_MIN <= pair[0] <= pair[1] <= VID_MAX
    ]


def stored_segments(value: Any) -> list[dict[str, str]]:
    """The well-formed {"resource", "id"} entries of a stored `shared_segments` array."""
    if not isinstance(value, list):
        return []
    kinds = {r.value for r in SharedResource}
    return [
        {"resource": s["resource"], "id": s["id"]}
        for s in value
        if isinstance(s, dict) and s.get("resource") in kinds and isinstance(s.get("id"), str)
    ]
