"""The Neutron v2.0 API's shapes (issue 12; OpenAPI tag "neutron"): request bodies as
Neutron's networking API reference documents them (envelopes `{"network": {...}}`), the
response shapes for the document, and NeutronError.

Unknown attributes are refused (400, as Neutron's "Unrecognized attribute(s)"); attributes
whose name carries a ':' (provider:network_type) are aliases.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from app.domain.names import MTU_MAX, MTU_MIN
from app.domain.neutron import convert_to_boolean


def _neutron_boolean(value: Any) -> Any:
    converted = convert_to_boolean(value)
    return value if converted is None else converted  # else the strict bool check: 400


# a boolean attribute of a request body, converted as Neutron's attribute map does
# (neutron-lib convert_to_boolean: "true", "False", "1", 0, ...)
NeutronBool = Annotated[bool, BeforeValidator(_neutron_boolean)]

NAME = "The network's name: its bridge's or VLAN's (unique in its project: 409 on a clash)"
PROVIDER = "Admin only (403 for a member; omitted from a member's view). "


class NeutronRequest(BaseModel):
    """A request body of the Neutron API: strict types, unknown attributes refused (400)."""

    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=False)


class NeutronNetworkCreate(NeutronRequest):
    name: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description=NAME + ". A bridge-backed (local, flat) network's name is a link name "
        "(1-15 of A-Za-z0-9_.-). Omitted or null: `net-` + 8 hex digits",
    )
    mtu: int | None = Field(
        None,
        strict=False,  # the CLI sends "1400" (Neutron converts: neutron-lib convert_to_int)
        ge=MTU_MIN,
        le=MTU_MAX,
        description="Bytes: a local or flat network's bridge MTU (a vlan network's: 400, it "
        "is its trunk's). Omitted or null: the kernel's (1500)",
    )
    router_external: NeutronBool | None = Field(
        None,
        alias="router:external",
        description="Only false (what every network here shows; true: 400, no routers here)",
    )
    port_security_enabled: NeutronBool | None = Field(
        None,
        description="Only the project's default, which every port made on the network gets "
        "(off in `default`, on in tenant projects; another value: 400: it is each port's)",
    )
    tags: list[str] | None = Field(
        None, max_length=50, description="Tags set at creation (Neutron's tag rules)"
    )
    description: str | None = Field(
        None, max_length=255, description="Kept on vlan networks; a bridge keeps none (400)"
    )
    admin_state_up: NeutronBool = Field(True, description="Only true (false: 400, not supported)")
    shared: NeutronBool | None = Field(
        None, description="Admin only: true shares the segment with every other project"
    )
    project_id: str | None = Field(
        None, min_length=1, max_length=64, description="Admin only: the project (id or name)"
    )
    tenant_id: str | None = Field(
        None, min_length=1, max_length=64, description="The same as project_id"
    )
    provider_network_type: str | None = Field(
        None,
        alias="provider:network_type",
        description=PROVIDER + "local, flat or vlan; without it: settings tenant_network_type",
    )
    provider_physical_network: str | None = Field(
        None,
        alias="provider:physical_network",
        description=PROVIDER + "a configured physnet (settings physical_networks)",
    )
    provider_segmentation_id: int | None = Field(
        None,
        alias="provider:segmentation_id",
        strict=False,  # the CLI sends "101" (Neutron converts: neutron-lib convert_to_int)
        ge=1,
        le=4094,
        description=PROVIDER + "the VLAN id (vlan only); without it the lowest free VID of "
        "the project's vlan_ranges",
    )


class NeutronNetworkUpdate(NeutronRequest):
    name: str = Field("", min_length=1, max_length=64, description=NAME + ". null: 400")
    mtu: int = Field(
        0,
        strict=False,  # as at create: "1400" is 1400
        ge=MTU_MIN,
        le=MTU_MAX,
        description="Bytes (net-mtu-writable): a local or flat network's bridge MTU, set on "
        "the bridge at once (its ports follow, as the native PATCH /v1/bridges does); a vlan "
        "network's is its trunk's (400). null: 400",
    )
    description: str | None = Field(None, max_length=255)
    admin_state_up: NeutronBool | None = Field(None, description="Only true (false: 400)")
    shared: NeutronBool | None = Field(None, description="Admin only")


class NeutronNetworkCreateRequest(NeutronRequest):
    network: NeutronNetworkCreate


class NeutronNetworkUpdateRequest(NeutronRequest):
    network: NeutronNetworkUpdate


class NeutronSubnetCreateRequest(NeutronRequest):
    subnet: dict[str, Any] = Field(
        description="Neutron's subnet attributes: network_id (a network: bridge or VLAN; "
        "unknown: 404 NetworkNotFound), ip_version (4; 6: 400), cidr (private IPv4, at most "
        "/29), gateway_ip (default the first host; null: 400), allocation_pools (one pool; "
        "default every host but the gateway), enable_dhcp, dns_nameservers (DHCP option 6), "
        "host_routes ({destination, nexthop}: DHCP option 121), name, description, tags, "
        "project_id/tenant_id. Another attribute: 400"
    )


class NeutronSubnetUpdateRequest(NeutronRequest):
    subnet: dict[str, Any] = Field(
        description="name, description, enable_dhcp, allocation_pools (one), "
        "dns_nameservers, host_routes; gateway_ip only unchanged. A read-only attribute "
        "(cidr, network_id, ...): 400"
    )


class NeutronQuotaRequest(NeutronRequest):
    quota: dict[str, Any] = Field(
        description="network, subnet, port: a limit 0-2147483647, or -1 (unlimited); "
        "check_limit (bool: refuse a limit below the usage, 400). Another key: 400"
    )


class NeutronTagsBody(NeutronRequest):
    tags: list[str] = Field(
        max_length=1000, description="Every tag of the resource (1-255 chars, no ',' or '/')"
    )


# ---- responses (for the document; the routes build them as JSON) ---------------------------


class NeutronNetwork(BaseModel):
    """A Neutron network (an L2 segment: one of our bridges or VLANs)."""

    model_config = ConfigDict(extra="allow")

    id: str
    name: str
    description: str
    status: str = Field(description="ACTIVE, DOWN, BUILD or ERROR (from our status)")
    admin_state_up: bool
    shared: bool
    subnets: list[str]
    mtu: int
    project_id: str
    tenant_id: str
    revision_number: int = Field(description="The row's generation (bumped on every change)")
    tags: list[str]
    created_at: str
    updated_at: str


class NeutronNetworkEnvelope(BaseModel):
    network: NeutronNetwork


class NeutronNetworksEnvelope(BaseModel):
    model_config = ConfigDict(extra="allow")  # networks_links when paged

    networks: list[NeutronNetwork]


class NeutronSubnet(BaseModel):
    """A Neutron subnet (one of our managed networks, on a bridge or VLAN)."""

    model_config = ConfigDict(extra="allow")

    id: str
    name: str
    network_id: str = Field(description="Its bridge's or VLAN's id (the Neutron network)")
    cidr: str
    gateway_ip: str
    ip_version: int = Field(description="Always 4")
    enable_dhcp: bool
    allocation_pools: list[dict[str, str]] = Field(description="One {start, end}")
    dns_nameservers: list[str]
    host_routes: list[dict[str, str]]
    project_id: str
    tenant_id: str
    revision_number: int
    tags: list[str]
    created_at: str
    updated_at: str


class NeutronSubnetEnvelope(BaseModel):
    subnet: NeutronSubnet


class NeutronSubnetsEnvelope(BaseModel):
    model_config = ConfigDict(extra="allow")  # subnets_links when paged

    subnets: list[NeutronSubnet]


class NeutronQuota(BaseModel):
    """A project's Neutron quotas: -1 is unlimited."""

    model_config = ConfigDict(extra="allow")

    network: int = Field(description="Our `segments` quota (bridges and VLANs)")
    subnet: int = Field(description="Our `networks` quota (managed networks)")
    port: int = Field(description="Our `ports` quota")
    project_id: str
    tenant_id: str


class NeutronQuotaEnvelope(BaseModel):
    quota: NeutronQuota


class NeutronQuotasEnvelope(BaseModel):
    quotas: list[NeutronQuota]


class NeutronQuotaDetailsEnvelope(BaseModel):
    quota: dict[str, Any] = Field(
        description="network, subnet, port: {used, limit (-1: unlimited), reserved (0)}"
    )


class NeutronTagsEnvelope(BaseModel):
    tags: list[str]


class NeutronExtension(BaseModel):
    alias: str
    name: str
    description: str
    updated: str
    links: list[dict[str, Any]]


class NeutronExtensionEnvelope(BaseModel):
    extension: NeutronExtension


class NeutronExtensionsEnvelope(BaseModel):
    extensions: list[NeutronExtension]


class NeutronErrorDetail(BaseModel):
    type: str
    message: str
    detail: str


class NeutronErrorBody(BaseModel):
    NeutronError: NeutronErrorDetail


NEUTRON_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": NeutronErrorBody, "description": text}
    for code, text in {
        400: "Bad request (never 422)",
        401: "No or unknown token",
        403: "Not allowed for this token",
        404: "Unknown id or path",
        409: "Conflict, in use or over quota",
        412: "If-Match: revision_number=N named another revision",
    }.items()
}
