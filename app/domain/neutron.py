"""Pure rules of the Neutron API view (issue 12): the physical networks configuration and
which network type a create gets, Neutron's tag rules, `If-Match: revision_number=N`.

The Neutron network <-> L2 segment mapping itself (bridge or VLAN rows) is in
app.services.neutron.networks; this module holds what needs no database.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from app.domain.dependents import Dependent, DependentKind, describe
from app.domain.errors import DomainError, InvalidInput
from app.domain.tenancy import Quota


class NetworkType(enum.StrEnum):
    """provider:network_type values this daemon serves (Neutron's ml2 type drivers)."""

    LOCAL = "local"  # a bridge of its own, on no physical network
    FLAT = "flat"  # a physical network's bridge itself
    VLAN = "vlan"  # an 802.1Q VLAN on a physical network's bridge (its trunk)


class TenantNetworkType(enum.StrEnum):
    """What a create without provider attributes gets (settings: tenant_network_type)."""

    AUTO = "auto"  # vlan where the host carries VLANs and a physnet is configured, else local
    VLAN = "vlan"
    LOCAL = "local"


@dataclass(frozen=True)
class NeutronConfig:
    """The settings the Neutron view needs: `physical_networks` maps a physnet name to the
    kernel name of its bridge (in the default project), `tenant_network_type` and
    `tenant_physical_network` (None: the first configured) decide a plain create's type."""

    physical_networks: Mapping[str, str] = field(default_factory=dict)
    tenant_network_type: TenantNetworkType = TenantNetworkType.AUTO
    tenant_physical_network: str | None = None

    def physnet_of_bridge(self, ifname: str) -> str | None:
        """The physnet whose bridge has this kernel name (None: no physnet's)."""
        return next((p for p, b in self.physical_networks.items() if b == ifname), None)

    def bridge_of(self, physnet: str) -> str:
        """The bridge name of `physnet`; 400 naming the configured ones for another."""
        bridge = self.physical_networks.get(physnet)
        if bridge is None:
            known = ", ".join(sorted(self.physical_networks)) or "none"
            raise NeutronBadRequest(
                f"physical network {physnet!r} is not configured (configured: {known}; "
                "settings physical_networks, KVMNETD_PHYSICAL_NETWORKS)"
            )
        return bridge

    def tenant_physnet(self) -> str | None:
        if self.tenant_physical_network is not None:
            return self.tenant_physical_network
        return next(iter(self.physical_networks), None)

    def tenant_type(self, host_carries_vlans: bool) -> NetworkType:
        """The type of a network created without provider attributes."""
        if self.tenant_network_type is TenantNetworkType.VLAN:
            return NetworkType.VLAN
        if self.tenant_network_type is TenantNetworkType.LOCAL:
            return NetworkType.LOCAL
        if host_carries_vlans and self.tenant_physnet() is not None:
            return NetworkType.VLAN
        return NetworkType.LOCAL


class NeutronBadRequest(InvalidInput):
    """400 under the Neutron API (Neutron never answers 422)."""

    kind = "bad-request"
    status = 400


class NeutronError(DomainError):
    """An error with Neutron's own `type` (NetworkNotFound, NetworkInUse, ...)."""

    def __init__(self, status: int, neutron_type: str, message: str, **extra: object) -> None:
        super().__init__(message, **extra)
        self.status = status
        self.neutron_type = neutron_type


def not_found(resource: str, resource_id: str) -> NeutronError:
    """Neutron's 404 for an unknown id: `NetworkNotFound`, "Network X could not be found."
    (what the clients' find-by-name falls back on)."""
    title = resource.capitalize()
    return NeutronError(404, f"{title}NotFound", f"{title} {resource_id} could not be found.")


class RevisionMismatch(DomainError):
    """If-Match: revision_number=N named another revision than the resource's (Neutron's
    RevisionNumberConstraintFailed, 412)."""

    kind = "revision-number-constraint-failed"
    status = 412
    title = "Revision number constraint failed"


# ---- quotas ---------------------------------------------------------------------------------

# Neutron's quota resource -> our quota: a Neutron network is an L2 segment (bridge or VLAN),
# a subnet a managed network, a port a port
QUOTA_RESOURCES: dict[str, Quota] = {
    "network": Quota.SEGMENTS,
    "subnet": Quota.NETWORKS,
    "port": Quota.PORTS,
}
_NEUTRON_NAMES = {quota.value: name for name, quota in QUOTA_RESOURCES.items()}


def neutron_resource(quota: str) -> str:
    """The Neutron resource of one of our quota names (ours where Neutron has none)."""
    return _NEUTRON_NAMES.get(quota, quota)


# ---- tags -----------------------------------------------------------------------------------

TAG_MAX = 255  # neutron-lib: db_const.TAG_FIELD_SIZE (the tag extension's MAX_TAG_LEN)


def convert_to_boolean(value: object) -> bool | None:
    """neutron-lib's converters.convert_to_boolean: a bool, "true"/"false"/"1"/"0" in any
    case, or the integers 1/0; None for anything else (the caller's 400)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return {"true": True, "1": True, "false": False, "0": False}.get(value.strip().lower())
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    return None


# our dependents' kinds in Neutron's words: a managed network is a subnet, a VM NIC or a tap
# on the segment a port of it (as Neutron would list it)
NEUTRON_KINDS = {
    DependentKind.NETWORK: "subnet",
    DependentKind.VM_NIC: "port (VM NIC)",
    DependentKind.TAP: "port (tap)",
    DependentKind.PORT: "port",
}


TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def timestamp(when: dt.datetime) -> str:
    """Neutron's standard-attr-timestamp: ISO 8601 in UTC to the second, with `Z`. A naive
    datetime is UTC (as the database stores them)."""
    if when.tzinfo is not None:
        when = when.astimezone(dt.UTC)
    return when.strftime(TIMESTAMP_FORMAT)


def parse_timestamp(text: str) -> str:
    """A timestamp a client sent (ISO 8601, datetime.fromisoformat's forms, `Z` included;
    without a zone: UTC) in the form `timestamp` shows, so the two compare equal.
    Raises NeutronBadRequest (400) when it is none."""
    try:
        return timestamp(dt.datetime.fromisoformat(text))
    except ValueError:
        raise NeutronBadRequest(f"'{text}' is not an ISO 8601 timestamp") from None


def neutron_dependents(listed: object) -> str:
    """An InUse error's `dependents` (a list of {kind, id, name} objects) as describe()
    says them, in Neutron's words: `subnet sub1, port (tap) tapc`."""
    items = [d for d in listed if isinstance(d, dict)] if isinstance(listed, list) else []
    found = [
        Dependent(DependentKind(d["kind"]), d["id"], d["name"])
        for d in items
        if isinstance(d, dict)
    ]
    return describe(found, words=NEUTRON_KINDS)


def validate_tag(tag: str) -> str:
    """A Neutron tag: 1-255 characters, no ',' (the filters' separator) and no '/' (the
    URL's): neutron-lib's tagging validator and Neutron's tag extension; and no control
    characters (U+0000-U+001F, U+007F). 400 NeutronBadRequest otherwise."""
    if not isinstance(tag, str) or not tag:
        raise NeutronBadRequest("a tag is a non-empty string")
    if len(tag) > TAG_MAX:
        raise NeutronBadRequest(f"tag {tag[:20]!r}... is {len(tag)} characters; at most {TAG_MAX}")
    if "," in tag or "/" in tag:
        raise NeutronBadRequest(f"tag {tag!r} contains ',' or '/', which tags may not")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in tag):
        # stricter than Neutron: a tag is printed in lists and shells, as our descriptions
        raise NeutronBadRequest(f"tag {tag!r} contains a control character, which tags may not")
    return tag


# ---- If-Match: revision_number=N ------------------------------------------------------------

_REVISION_RE = re.compile(r"\s*revision_number\s*=\s*(\d+)\s*")


def revision_constraint(if_match: str | None) -> int | None:
    """The N of `If-Match: revision_number=N` (Neutron's revision-if-match extension), None
    without the header; 400 for another form of If-Match (Neutron accepts only this one)."""
    if if_match is None:
        return None
    found = _REVISION_RE.fullmatch(if_match)
    if found is None:
        raise NeutronBadRequest(f"If-Match must be 'revision_number=<int>' (got {if_match[:60]!r})")
    return int(found.group(1))


def check_revision(expected: int | None, current: int) -> None:
    """412 when an If-Match revision was given and the resource is at another one."""
    if expected is not None and expected != current:
        raise RevisionMismatch(f"Constrained to {expected}, but current revision is {current}")
