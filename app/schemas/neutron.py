"""The Neutron v2.0 API's shapes (issue 12; OpenAPI tag "neutron"): request bodies as
Neutron's networking API reference documents them (envelopes `{"network": {...}}`), the
response shapes for the document, and NeutronError.

Unknown attributes are refused (400, as Neutron's "Unrecognized attribute(s)"); attributes
whose name carries a ':' (provider:network_type) are aliases.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

NAME = "The network's name: its bridge's or VLAN's (unique in its project: 409 on a clash)"
PROVIDER = "Admin only (403 for a member; omitted from a member's view). "


class NeutronRequest(BaseModel):
    """A request body of the Neutron API: strict types, unknown attributes refused (400)."""

    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=False)


class NeutronNetworkCreate(NeutronRequest):
    name: str = Field(
        min_length=1,
        max_length=64,
        description=NAME + ". A bridge-backed (local, flat) network's name is a link name "
        "(1-15 of A-Za-z0-9_.-)",
    )
    description: str | None = Field(
        None, max_length=255, description="Kept on vlan networks; a bridge keeps none (400)"
    )
    admin_state_up: bool = Field(True, description="Only true (false: 400, not supported)")
    shared: bool | None = Field(
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
    name: str | None = Field(None, min_length=1, max_length=64, description=NAME)
    description: str | None = Field(None, max_length=255)
    admin_state_up: bool | None = Field(None, description="Only true (false: 400)")
    shared: bool | None = Field(None, description="Admin only")


class NeutronNetworkCreateRequest(NeutronRequest):
    network: NeutronNetworkCreate


class NeutronNetworkUpdateRequest(NeutronRequest):
    network: NeutronNetworkUpdate


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
