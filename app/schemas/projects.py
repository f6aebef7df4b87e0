"""Projects and their tokens as the API accepts and shows them (rules:
app.domain.projects; roles and principals: app.domain.tenancy)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from app.domain.errors import InvalidInput
from app.domain.projects import (
    DESCRIPTION_MAX,
    LAST_USED_GRANULARITY_S,
    PROJECT_NAME_MAX,
    PROJECT_NAME_PATTERN,
    QUOTA_MAX,
    SHARED_SEGMENTS_MAX,
    TOKEN_LIFETIME_MAX_S,
    VLAN_RANGES_MAX,
    SharedResource,
    TokenState,
    validate_project_name,
    validate_quotas,
    validate_vlan_ranges,
)
from app.domain.tenancy import Quota, Role, Via
from app.domain.vlans import VID_MAX, VID_MIN
from app.schemas.common import ONE_LINE, Page, Ref, RequestModel, UpdateModel

ProjectNameStr = Annotated[
    str,
    Field(
        min_length=1,
        description=f"1-{PROJECT_NAME_MAX} letters, digits and '-', neither first nor last "
        "'-' (an RFC 1123 host name label, as VM names); unique without regard to case, else "
        "409 name-taken; never truncated. The project `default` cannot be renamed",
        examples=["acme"],
        json_schema_extra={"maxLength": PROJECT_NAME_MAX, "pattern": PROJECT_NAME_PATTERN},
    ),
    AfterValidator(validate_project_name),
]
Description = Annotated[str, Field(max_length=DESCRIPTION_MAX, examples=["team A"]), ONE_LINE]

QUOTA_DOCS = {
    Quota.VMS: "VMs",
    Quota.VCPUS: "vCPUs, summed over the project's VMs",
    Quota.MEMORY_MIB: "Memory in MiB, summed over the project's VMs",
    Quota.TAPS: "Taps",
    Quota.BRIDGES: "Bridges",
    Quota.VLANS: "VLANs",
    Quota.SEGMENTS: "L2 segments: bridges and VLANs together (Neutron's `network` quota)",
    Quota.NETWORKS: "Managed networks",
    Quota.PORT_FORWARDS: "Port forwards",
    Quota.PORTS: "Ports (/v1/ports)",
}


def _quota(quota: Quota) -> Any:
    return Field(
        None,
        ge=0,
        le=QUOTA_MAX,
        description=f"{QUOTA_DOCS[quota]}: an integer 0-{QUOTA_MAX}; null or absent: unlimited",
    )


class Quotas(RequestModel):
    """Limits of a project (Neutron /v2.0/quotas, Incus limits.*): each an integer >= 0;
    null or absent: unlimited. Another key is a 422 naming the allowed ones."""

    vms: int | None = _quota(Quota.VMS)
    vcpus: int | None = _quota(Quota.VCPUS)
    memory_mib: int | None = _quota(Quota.MEMORY_MIB)
    taps: int | None = _quota(Quota.TAPS)
    bridges: int | None = _quota(Quota.BRIDGES)
    vlans: int | None = _quota(Quota.VLANS)
    segments: int | None = _quota(Quota.SEGMENTS)
    networks: int | None = _quota(Quota.NETWORKS)
    port_forwards: int | None = _quota(Quota.PORT_FORWARDS)
    ports: int | None = _quota(Quota.PORTS)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - {q.value for q in Quota})
            if unknown:
                allowed = ", ".join(q.value for q in Quota)
                raise ValueError(f"unknown quota {unknown[0]!r}; the quotas are: {allowed}")
        return data

    def limits(self) -> dict[str, int]:
        """The limited quotas only (what the database keeps)."""
        return validate_quotas(self.model_dump())


assert set(Quotas.model_fields) == {q.value for q in Quota}  # one field per Quota

VlanId = Annotated[int, Field(ge=VID_MIN, le=VID_MAX)]
VlanRange = Annotated[
    list[VlanId],
    Field(
        min_length=2,
        max_length=2,
        description=f"[first, last] VLAN ids, inclusive, each {VID_MIN}-{VID_MAX} (IEEE "
        "802.1Q-2018 9.6: 0 and 4095 are reserved), first <= last",
        examples=[[100, 199]],
    ),
]


def _ranges(value: list[list[int]]) -> list[list[int]]:
    return validate_vlan_ranges(value)


VlanRanges = Annotated[
    list[VlanRange],
    Field(
        max_length=VLAN_RANGES_MAX,
        description="The VLAN ids the project's VLANs may use: ranges that do not overlap "
        "(answered sorted). Empty: none",
    ),
    AfterValidator(_ranges),
]


class SharedSegmentIn(RequestModel):
    """A bridge, VLAN or managed network of another project that this project's NICs may
    attach to (Neutron's shared network)."""

    resource: SharedResource = Field(strict=False, description="bridge, vlan or network")
    id: Ref = Field(
        description="Its id, or its name where only one project has a segment of that name "
        "(stored as the id). Unknown or the project's own: 422; being deleted or a name "
        "several projects use: 409",
        examples=["br0"],
    )


SharedSegments = Annotated[
    list[SharedSegmentIn],
    Field(
        max_length=SHARED_SEGMENTS_MAX,
        description="Segments of other projects the project may attach to, each once. A "
        "shared segment deleted later drops out of every project's list",
    ),
]


class ProjectCreate(RequestModel):
    """A project (tenant). Its resources, tokens and quotas are its own."""

    name: ProjectNameStr
    description: Description | None = None
    quotas: Quotas | None = Field(None, description="null or absent: every quota unlimited")
    vlan_ranges: VlanRanges | None = Field(None, description="null or absent: none")
    shared_segments: SharedSegments | None = Field(None, description="null or absent: none")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "acme",
                    "description": "team A",
                    "quotas": {"vms": 10, "memory_mib": 16384},
                    "vlan_ranges": [[100, 199]],
                }
            ]
        }
    )


class ProjectUpdate(UpdateModel):
    """Change a project (admin only). A field left out is unchanged; null: see each field."""

    name: ProjectNameStr = Field(
        "", description="A new name (rules as at creation); null is refused (422)"
    )
    description: Description | None = Field(None, description="null: none")
    quotas: Quotas | None = Field(
        None,
        description="Merged key by key into the project's quotas: a key sent with a number "
        "sets that limit, one sent as null makes it unlimited, one left out is unchanged. "
        "null (the whole object): every quota unlimited",
    )
    vlan_ranges: VlanRanges | None = Field(None, description="Replaces the ranges; null: none")
    shared_segments: SharedSegments | None = Field(
        None, description="Replaces the list; null: none"
    )

    def resolve_nulls(self, changes: dict[str, Any]) -> dict[str, Any]:
        if "vlan_ranges" in changes and changes["vlan_ranges"] is None:
            changes["vlan_ranges"] = []
        if "shared_segments" in changes and changes["shared_segments"] is None:
            changes["shared_segments"] = []
        if "quotas" in changes:
            sent = self.quotas
            # the keys the client named (a null one: unlimited), None: reset every quota
            changes["quotas"] = (
                None if sent is None else sent.model_dump(include=sent.model_fields_set)
            )
        return changes


class SharedSegmentOut(BaseModel):
    resource: SharedResource
    id: str
    name: str = Field(description="Its name now")


class QuotasOut(BaseModel):
    """Every quota, null where unlimited."""

    model_config = ConfigDict(title="QuotaLimits")

    vms: int | None
    vcpus: int | None
    memory_mib: int | None = Field(description="MiB")
    taps: int | None
    bridges: int | None
    vlans: int | None
    segments: int | None = Field(description="Bridges and VLANs together")
    networks: int | None
    port_forwards: int | None
    ports: int | None


assert set(QuotasOut.model_fields) == {q.value for q in Quota}  # one field per Quota


class ProjectOut(BaseModel):
    model_config = ConfigDict(title="Project")

    id: str
    name: str
    description: str | None
    quotas: QuotasOut
    vlan_ranges: list[list[int]] = Field(description="[first, last] VLAN id ranges, sorted")
    shared_segments: list[SharedSegmentOut] = Field(
        description="The shared segments that still exist (a deleted one drops out)"
    )
    created_at: dt.datetime
    updated_at: dt.datetime


class ProjectPage(Page[ProjectOut]):
    """One page of projects."""


# RFC 3339 section 5.6 date-time: a full date, "T", a full time with seconds and an offset
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})"
)


def _rfc3339(value: Any) -> Any:
    """The text of an RFC 3339 date-time with an offset; null passes (no expiry, as the
    schema says)."""
    if value is None:
        return None
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise InvalidInput(
            "expires_at must be an RFC 3339 date-time with an offset, e.g. "
            "2027-01-31T12:00:00Z (not a number, not without a time zone)"
        )
    return value


class TokenCreate(RequestModel):
    """A bearer token of the project. Its `secret` is in this answer only (201), never again:
    the database keeps its SHA-256. An admin may make any role; a member only member or
    reader tokens of its own project (403 otherwise); a reader none."""

    role: Role = Field(
        strict=False,
        description="admin: every project (admins only may make one); member: create, "
        "change and delete in the project; reader: read only",
    )
    description: Description | None = None
    expires_at: Annotated[dt.datetime | None, BeforeValidator(_rfc3339)] = Field(
        None,
        strict=False,
        description="When it stops working: an RFC 3339 date-time with an offset, in the "
        f"future, at most {TOKEN_LIFETIME_MAX_S} s (ten years) away. Not with expires_in_s; "
        "neither (or null): it never expires",
        json_schema_extra={"format": "date-time"},
    )
    expires_in_s: int | None = Field(
        None,
        ge=1,
        le=TOKEN_LIFETIME_MAX_S,
        description="Seconds from now until it stops working; not with expires_at",
    )

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"role": "member", "description": "ci", "expires_in_s": 86400}]
        }
    )


class TokenOut(BaseModel):
    """A token as listed: never its secret."""

    model_config = ConfigDict(title="Token")

    id: str
    project_id: str
    role: Role
    description: str | None
    created_at: dt.datetime
    expires_at: dt.datetime | None = Field(description="null: never")
    revoked_at: dt.datetime | None = Field(description="null: not revoked")
    last_used_at: dt.datetime | None = Field(
        description=f"When it last authenticated a request, to within "
        f"{LAST_USED_GRANULARITY_S:g} s (written at most once per {LAST_USED_GRANULARITY_S:g} s "
        "per token, after the request); null: never used"
    )
    state: TokenState = Field(description="active; expired (expires_at passed); revoked")


class TokenCreated(TokenOut):
    """The new token, with its secret: shown this once."""

    model_config = ConfigDict(title="TokenCreated")

    secret: str = Field(
        description="Send as `Authorization: Bearer <secret>` or `X-Auth-Token: <secret>`. "
        "Shown only in this answer",
        examples=["kvmnetd_3q2-…"],
    )


class TokenPage(Page[TokenOut]):
    """One page of a project's tokens (never their secrets)."""


class Whoami(BaseModel):
    """Who the request acts as."""

    project_id: str
    project: str | None = Field(description="The project's name")
    role: Role
    via: Via = Field(
        description="unix-socket: the daemon's socket (admin); admin-token: the first-start "
        "token file (admin); token: a project token (token_id)"
    )
    token_id: str | None = Field(description="The project token's id (null: not a token row)")
    expires_at: dt.datetime | None = Field(description="The token's expiry (null: never)")


__all__ = [
    "ProjectCreate",
    "ProjectOut",
    "ProjectPage",
    "ProjectUpdate",
    "Quotas",
    "SharedSegmentIn",
    "TokenCreate",
    "TokenCreated",
    "TokenOut",
    "TokenPage",
    "Whoami",
]
