"""Neutron subnets <-> our managed networks (the `networks` table), pure: the subnet view of
a network row, and the native create/update models a Neutron subnet request becomes.

A Neutron subnet is L3 on a Neutron network; here it is the one managed IPv4 network on an
L2 segment (a bridge or a VLAN, whose id is the Neutron network's id). The defaults are
Neutron's (neutron-lib api-ref, "Create subnet"): without `gateway_ip` the gateway is the
first host of the CIDR; without `allocation_pools` the pool covers every host but the
gateway; `enable_dhcp` is true. What kvmnetd cannot do is refused with Neutron's 400/409
wording, raised as our domain errors (the Neutron error handler renders them):

- `gateway_ip: null` (a subnet without gateway): the gateway is the host's own address on
  the segment, where dnsmasq and NAT live;
- more than one allocation pool: dnsmasq serves one DHCP range per network. When the
  gateway lies inside the subnet so that Neutron's default would be two pools, the larger
  of the two is taken (the upper one on a tie);
- `ip_version` 6, IPv6 modes, subnet pools, `prefixlen`, segments and service types.

Names: our network names are 1-64 of [A-Za-z0-9_.-], unique in the project; a subnet
without a name is called `subnet-<first 8 hex digits of its network's id>` (one subnet per
network, so that name is free unless the user took it). Neutron-created subnets never
masquerade (`nat` false: this Neutron subset has no routers).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from pydantic import ValidationError

from app.db.models import Network
from app.domain.errors import Conflict, InvalidInput
from app.domain.networks import (
    check_host_routes,
    check_nameservers,
    parse_address,
    parse_subnet,
)
from app.domain.neutron import timestamp
from app.domain.segments import SegmentKind
from app.schemas.networks import NetworkCreate, NetworkUpdate

IPV6_REFUSED = "IPv6 subnets are not supported yet"
NO_GATEWAY = (
    "Invalid input for gateway_ip. Reason: a subnet without a gateway is not supported: the "
    "gateway is the host's own address on the network (where DHCP, DNS and NAT live)."
)
# what a create may carry: Neutron's subnet attributes (tags are the caller's to store)
CREATE_ATTRIBUTES = frozenset(
    {
        "name",
        "description",
        "network_id",
        "cidr",
        "ip_version",
        "gateway_ip",
        "allocation_pools",
        "enable_dhcp",
        "dns_nameservers",
        "host_routes",
        "project_id",
        "tenant_id",
        "ipv6_ra_mode",
        "ipv6_address_mode",
        "subnetpool_id",
        "use_default_subnetpool",
        "prefixlen",
        "segment_id",
        "service_types",
        "tags",
    }
)
UPDATE_ATTRIBUTES = frozenset(
    {
        "name",
        "description",
        "enable_dhcp",
        "dns_nameservers",
        "host_routes",
        "allocation_pools",
        "gateway_ip",
        "service_types",
    }
)
# what Neutron shows but never lets a PUT change ("Cannot update read-only attribute")
READ_ONLY = frozenset(
    {
        "id",
        "network_id",
        "cidr",
        "ip_version",
        "project_id",
        "tenant_id",
        "ipv6_ra_mode",
        "ipv6_address_mode",
        "subnetpool_id",
        "segment_id",
        "prefixlen",
        "revision_number",
        "created_at",
        "updated_at",
        "tags",
    }
)
NAME_PREFIX = "subnet-"


# ---- the view --------------------------------------------------------------------------------


def _listed(stored: object) -> list[Any]:
    """A stored JSON list as it is, anything else (a row written by hand) as []."""
    return list(stored) if isinstance(stored, list) else []


def subnet_view(network_row: Network, segment_id: str, tags: Iterable[str]) -> dict[str, Any]:
    """The Neutron subnet attributes of a managed network on the L2 segment `segment_id`
    (its bridge's or VLAN's id: the Neutron network), with its `tags`."""
    row = network_row
    return {
        "id": row.id,
        "name": row.name,
        "network_id": segment_id,
        "project_id": row.project_id,
        "tenant_id": row.project_id,
        "cidr": row.subnet,
        "gateway_ip": row.gateway,
        "ip_version": 4,
        "enable_dhcp": row.dhcp,
        "allocation_pools": [{"start": row.range_start, "end": row.range_end}],
        "dns_nameservers": _listed(row.dns_nameservers),
        "host_routes": [r for r in _listed(row.host_routes) if isinstance(r, dict)],
        "description": row.description or "",
        "ipv6_ra_mode": None,
        "ipv6_address_mode": None,
        "subnetpool_id": None,
        "segment_id": None,
        "service_types": [],
        "tags": sorted(tags),
        "revision_number": row.generation,
        "created_at": timestamp(row.created_at),
        "updated_at": timestamp(row.updated_at),
    }


# ---- Neutron's input rules -------------------------------------------------------------------


def _invalid(attribute: str, reason: str) -> InvalidInput:
    """Neutron's wording of an attribute that fails validation (400)."""
    return InvalidInput(f"Invalid input for {attribute}. Reason: {reason}")


def _boolean(attribute: str, value: object) -> bool:
    """Neutron's convert_to_boolean: true/false, 0/1, and those words as strings."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    raise _invalid(attribute, f"'{value}' cannot be converted to boolean.")


def _text(attribute: str, value: object, most: int = 255) -> str:
    if not isinstance(value, str):
        raise _invalid(attribute, f"'{value}' is not a valid string.")
    if len(value) > most:
        raise _invalid(attribute, f"'{value}' exceeds maximum length of {most}.")
    return value


def _refuse_unknown(body: Mapping[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidInput(f"Unrecognized attribute(s) '{', '.join(unknown)}'")


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    """What this Neutron subset leaves out: given with a value, it is refused."""
    for attribute in ("ipv6_ra_mode", "ipv6_address_mode"):
        if body.get(attribute) is not None:
            raise _invalid(attribute, IPV6_REFUSED + ".")
    for attribute in ("subnetpool_id", "prefixlen", "segment_id"):
        if body.get(attribute) is not None:
            raise _invalid(attribute, "subnet pools and routed network segments are not supported.")
    if body.get("use_default_subnetpool") not in (None, False):
        raise _invalid("use_default_subnetpool", "subnet pools are not supported.")
    if body.get("service_types") not in (None, []):
        raise _invalid("service_types", "subnet service types are not supported.")


def _ip_version(body: Mapping[str, Any]) -> None:
    if "ip_version" not in body:
        raise InvalidInput("Failed to parse request. Required attribute 'ip_version' not specified")
    version = body["ip_version"]
    if isinstance(version, str) and version.isdigit():
        version = int(version)
    if version == 6:
        raise _invalid("ip_version", IPV6_REFUSED + ".")
    if version != 4 or isinstance(version, bool):
        raise _invalid("ip_version", f"{version} is not in [4, 6].")


def _cidr(body: Mapping[str, Any]) -> IPv4Network:
    if body.get("cidr") is None:
        raise InvalidInput("Failed to parse request. Required attribute 'cidr' not specified")
    text = _text("cidr", body["cidr"], 43)
    try:
        network = IPv4Network(text, strict=False)
    except ValueError:
        if ":" in text:
            raise _invalid("cidr", IPV6_REFUSED + ".") from None
        raise _invalid("cidr", f"'{text}' is not a valid IP subnet.") from None
    if str(network) != text:
        raise _invalid("cidr", f"'{text}' isn't a recommended CIDR, '{network}' is recommended.")
    try:
        return parse_subnet(text)  # kvmnetd's own rules: private, at least a /29
    except InvalidInput as exc:
        raise _invalid("cidr", exc.detail) from None


def _address(attribute: str, value: object) -> IPv4Address:
    text = _text(attribute, value, 64)
    try:
        return parse_address(text, attribute)
    except InvalidInput:
        raise _invalid(attribute, f"'{text}' is not a valid IP address.") from None


def _gateway(body: Mapping[str, Any], subnet: IPv4Network) -> IPv4Address:
    """The gateway: given, else the first host (Neutron allocates it from the CIDR)."""
    if "gateway_ip" not in body:
        return subnet.network_address + 1
    value = body["gateway_ip"]
    if value is None or value == "":
        raise InvalidInput(NO_GATEWAY)
    gateway = _address("gateway_ip", value)
    if gateway not in subnet or gateway in (subnet.network_address, subnet.broadcast_address):
        raise _invalid("gateway_ip", f"Gateway IP {gateway} is not a host of the subnet {subnet}.")
    return gateway


def default_pool(subnet: IPv4Network, gateway: IPv4Address) -> tuple[IPv4Address, IPv4Address]:
    """Neutron's default pools cover every host of the subnet but the gateway; that is one
    range when the gateway is the first or last host, else two, of which dnsmasq's one
    range takes the larger (the upper one on a tie)."""
    first, last = subnet.network_address + 1, subnet.broadcast_address - 1
    below = int(gateway) - int(first)  # hosts before the gateway
    above = int(last) - int(gateway)  # hosts after it
    if above >= below:
        return gateway + 1, last
    return first, gateway - 1


def _pool(
    value: object, subnet: IPv4Network, gateway: IPv4Address
) -> tuple[IPv4Address, IPv4Address]:
    """The one allocation pool of a request, checked as Neutron checks pools: inside the
    subnet, start <= end, not holding the gateway (409, as Neutron's
    GatewayConflictWithAllocationPools)."""
    if not isinstance(value, list):
        raise _invalid("allocation_pools", f"'{value}' is not a list.")
    if len(value) != 1:
        raise _invalid(
            "allocation_pools",
            f"{len(value)} allocation pools given: a kvmnetd subnet has exactly one "
            "(dnsmasq serves one DHCP range per network).",
        )
    pool = value[0]
    if not isinstance(pool, dict) or set(pool) != {"start", "end"}:
        raise _invalid("allocation_pools", f"'{pool}' is not a {{start, end}} object.")
    start, end = (
        _address("allocation_pools", pool["start"]),
        _address("allocation_pools", pool["end"]),
    )
    hosts = (subnet.network_address, subnet.broadcast_address)
    if start not in subnet or end not in subnet or start in hosts or end in hosts:
        raise InvalidInput(
            f"The allocation pool {start}-{end} spans beyond the subnet cidr {subnet}."
        )
    if start > end:
        raise InvalidInput(
            f"The allocation pool {start}-{end} is invalid: its start is after its end."
        )
    if start <= gateway <= end:
        raise Conflict(f"Gateway ip {gateway} conflicts with allocation pool {start}-{end}")
    return start, end


def _nameservers(value: object) -> list[str]:
    """Neutron's dns_nameservers (null: []), by our rules (check_nameservers)."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _invalid("dns_nameservers", f"'{value}' is not a list of IP addresses.")
    try:
        return [str(a) for a in check_nameservers(value)]
    except InvalidInput as exc:
        raise _invalid("dns_nameservers", exc.detail) from None


def _routes(value: object, subnet: IPv4Network) -> list[dict[str, str]]:
    """Neutron's host_routes (null: []): {destination, nexthop} objects (check_host_routes)."""
    if value is None:
        return []
    shaped = isinstance(value, list) and all(
        isinstance(r, dict)
        and set(r) == {"destination", "nexthop"}
        and all(isinstance(v, str) for v in r.values())
        for r in value
    )
    if not shaped or not isinstance(value, list):
        raise _invalid(
            "host_routes", f"'{value}' is not a list of {{destination, nexthop}} objects."
        )
    try:
        routes = check_host_routes(subnet, [(r["destination"], r["nexthop"]) for r in value])
    except InvalidInput as exc:
        raise _invalid("host_routes", exc.detail) from None
    return [route.as_dict() for route in routes]


def _name(value: object) -> str:
    name = _text("name", value)
    if name == "":
        raise _invalid("name", "a kvmnetd subnet needs a name (1-64 of A-Za-z0-9_.-).")
    return name


def _description(value: object) -> str | None:
    """Neutron's "" (its default) is no description."""
    if value is None:
        return None
    return _text("description", value) or None


def _model(model: type[NetworkCreate] | type[NetworkUpdate], data: dict[str, Any]) -> Any:
    """The native model, a refusal of it (a name outside our alphabet, say) as a Neutron
    400 naming the attribute."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "subnet"
        raise _invalid(where, f"{error['msg']}.") from None


# ---- create and update -----------------------------------------------------------------------


def network_create_from_subnet(body: Mapping[str, Any], segment_kind: SegmentKind) -> NetworkCreate:
    """The native NetworkCreate a Neutron subnet create asks for. `body` is the `subnet`
    object; `segment_kind` is what its `network_id` names (SegmentKind.BRIDGE or
    SegmentKind.VLAN: the caller looked the id up, a 404 there being Neutron's
    NetworkNotFound). Its `tags` are left to the caller."""
    _refuse_unknown(body, CREATE_ATTRIBUTES)
    _refuse_unsupported(body)
    _ip_version(body)
    network_id = body.get("network_id")
    if not isinstance(network_id, str) or not network_id:
        raise InvalidInput("Failed to parse request. Required attribute 'network_id' not specified")
    if segment_kind not in (SegmentKind.BRIDGE, SegmentKind.VLAN):
        raise InvalidInput(f"a subnet is on a bridge or VLAN network, not on a {segment_kind}")
    subnet = _cidr(body)
    gateway = _gateway(body, subnet)
    if body.get("allocation_pools") is None:
        start, end = default_pool(subnet, gateway)
    else:
        start, end = _pool(body["allocation_pools"], subnet, gateway)
    name = body.get("name")
    data: dict[str, Any] = {
        "name": _name(name) if name not in (None, "") else NAME_PREFIX + network_id[:8],
        segment_kind.value: network_id,
        "subnet": str(subnet),
        "gateway": str(gateway),
        "nat": {"enabled": False},
        "dhcp": {
            "enabled": _boolean("enable_dhcp", body.get("enable_dhcp", True)),
            "range_start": str(start),
            "range_end": str(end),
        },
        "dns_nameservers": _nameservers(body.get("dns_nameservers")),
        "host_routes": _routes(body.get("host_routes"), subnet),
        "description": _description(body.get("description")),
    }
    project = _project(body)
    if project is not None:
        data["project_id"] = project
    model: NetworkCreate = _model(NetworkCreate, data)
    return model


def _project(body: Mapping[str, Any]) -> str | None:
    """project_id or tenant_id (Neutron's two names of one thing; both given must agree)."""
    project, tenant = body.get("project_id"), body.get("tenant_id")
    if project is not None and tenant is not None and project != tenant:
        raise InvalidInput("'project_id' and 'tenant_id' do not match")
    chosen = project if project is not None else tenant
    return None if chosen is None else _text("project_id", chosen, 64)


def network_update_from_subnet(body: Mapping[str, Any], current: Network) -> NetworkUpdate:
    """The native NetworkUpdate a Neutron subnet update asks for. `current` is the network
    as stored: our `dhcp` object replaces all DHCP settings, so what the update leaves out
    (enable_dhcp or the pool, the lease time) is carried over from it; a `gateway_ip` equal
    to the current one changes nothing, another is refused (the gateway is fixed at
    creation)."""
    read_only = sorted(set(body) & READ_ONLY)
    if read_only:
        raise InvalidInput(f"Cannot update read-only attribute {read_only[0]}")
    _refuse_unknown(body, UPDATE_ATTRIBUTES)
    _refuse_unsupported(body)
    subnet = IPv4Network(current.subnet)
    gateway = IPv4Address(current.gateway)
    data: dict[str, Any] = {}
    if "gateway_ip" in body:
        value = body["gateway_ip"]
        if value is None or value == "":
            raise InvalidInput(NO_GATEWAY)
        if _address("gateway_ip", value) != gateway:
            raise _invalid(
                "gateway_ip",
                f"the gateway {gateway} cannot change: it is the host's address on the "
                "network; delete the subnet and create it again with the new gateway.",
            )
    if "name" in body:
        data["name"] = _name(body["name"])
    if "description" in body:
        data["description"] = _description(body["description"])
    if "enable_dhcp" in body or "allocation_pools" in body:
        start, end = IPv4Address(current.range_start), IPv4Address(current.range_end)
        if body.get("allocation_pools") is not None:
            start, end = _pool(body["allocation_pools"], subnet, gateway)
        elif "allocation_pools" in body:
            raise _invalid("allocation_pools", "a kvmnetd subnet has exactly one pool.")
        enabled = _boolean("enable_dhcp", body.get("enable_dhcp", current.dhcp))
        data["dhcp"] = {
            "enabled": enabled,
            "range_start": str(start),
            "range_end": str(end),
            "lease_time": current.lease_seconds,
        }
    if "dns_nameservers" in body:
        data["dns_nameservers"] = _nameservers(body["dns_nameservers"])
    if "host_routes" in body:
        data["host_routes"] = _routes(body["host_routes"], subnet)
    model: NetworkUpdate = _model(NetworkUpdate, data)
    return model
