"""The Neutron v2.0 port shapes (issue 12; OpenAPI tag "neutron"): request bodies as
Neutron's networking API reference ("Ports") documents them, within what a kvmnetd port is
(app.schemas.ports), and the response shape for the document.

Unknown attributes are refused (400, Neutron's "Unrecognized attribute(s)"); `binding:*`
names are aliases.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.neutron import NeutronBool, NeutronRequest

NAME = (
    "The port's name: 1-64 of A-Za-z0-9_.- (starting with a letter or digit), unique in its "
    "project (409 on a clash). Empty or omitted: `port-` + the first 8 hex digits of its id"
)
FIXED_IPS = (
    "At most one IPv4 address on the network's subnet (400 for more): {ip_address?, "
    "subnet_id?}. Omitted: the lowest free address when the network has a subnet; []: none"
)
PAIRS = (
    "Neutron's allowed_address_pairs: ip_address (an IPv4/IPv6 address or prefix) the guest "
    "may also send from; a pair's mac_address must be the port's own (400 otherwise)"
)
MAC = "The guest's MAC (unique among ports and VM NICs: 409). Omitted: a generated one"


class NeutronFixedIp(NeutronRequest):
    subnet_id: str | None = Field(
        None, max_length=64, description="The subnet (its network's) id; 400 for another"
    )
    ip_address: str | None = Field(None, max_length=15, description="The IPv4 address")


class NeutronAddressPair(NeutronRequest):
    ip_address: str = Field(min_length=1, max_length=64)
    mac_address: str | None = Field(None, max_length=17, description="Only the port's own MAC")


class NeutronPortCreate(NeutronRequest):
    network_id: str = Field(min_length=1, max_length=64, description="The network's id")
    name: str = Field("", max_length=64, description=NAME)
    description: str | None = Field(None, max_length=255)
    mac_address: str | None = Field(None, max_length=17, description=MAC)
    fixed_ips: list[NeutronFixedIp] | None = Field(None, max_length=16, description=FIXED_IPS)
    device_id: str = Field("", max_length=255)
    device_owner: str = Field("", max_length=255)
    admin_state_up: NeutronBool = Field(True, description="Only true (false: 400, not supported)")
    port_security_enabled: NeutronBool | None = Field(
        None, description="Anti-spoofing of the port's tap; omitted: on in tenant projects"
    )
    allowed_address_pairs: list[NeutronAddressPair] | None = Field(
        None, max_length=16, description=PAIRS
    )
    security_groups: list[str] | None = Field(
        None, max_length=0, description="Only [] (no security groups in this subset)"
    )
    project_id: str | None = Field(
        None, min_length=1, max_length=64, description="Admin only: the project (id or name)"
    )
    tenant_id: str | None = Field(
        None, min_length=1, max_length=64, description="The same as project_id"
    )
    binding_vnic_type: str | None = Field(
        None, alias="binding:vnic_type", description="Only `normal` (400 otherwise)"
    )


class NeutronPortUpdate(NeutronRequest):
    name: str = Field("", max_length=64, description=NAME + ". null: 400")
    description: str | None = Field(None, max_length=255)
    fixed_ips: list[NeutronFixedIp] | None = Field(
        None,
        max_length=16,
        description=FIXED_IPS + ". Only while no VM uses the port (409 otherwise)",
    )
    device_id: str | None = Field(None, max_length=255)
    device_owner: str | None = Field(None, max_length=255)
    admin_state_up: NeutronBool | None = Field(None, description="Only true (false: 400)")
    mac_address: str | None = Field(None, max_length=17, description="Only the port's own")
    port_security_enabled: NeutronBool | None = Field(
        None, description="Fixed at creation: only the port's own value (400 otherwise)"
    )
    allowed_address_pairs: list[NeutronAddressPair] | None = Field(
        None, max_length=16, description="Fixed at creation: only the port's own (400 otherwise)"
    )
    security_groups: list[str] | None = Field(None, max_length=0, description="Only []")
    binding_vnic_type: str | None = Field(None, alias="binding:vnic_type")


class NeutronPortCreateRequest(NeutronRequest):
    port: NeutronPortCreate


class NeutronPortUpdateRequest(NeutronRequest):
    port: NeutronPortUpdate


class NeutronFixedIpOut(BaseModel):
    subnet_id: str
    ip_address: str


class NeutronPort(BaseModel):
    """A Neutron port (a kvmnetd port: a tap, a MAC, at most one fixed IPv4)."""

    model_config = ConfigDict(extra="allow")  # binding:* attributes

    id: str
    name: str
    description: str
    network_id: str = Field(description="The segment's (bridge's or VLAN's) id")
    project_id: str
    tenant_id: str
    mac_address: str
    fixed_ips: list[NeutronFixedIpOut]
    device_id: str
    device_owner: str
    status: str = Field(
        description="DOWN, ACTIVE (a VM uses it, its tap has carrier), BUILD, ERROR"
    )
    admin_state_up: bool
    port_security_enabled: bool
    allowed_address_pairs: list[dict[str, str]]
    security_groups: list[str]
    revision_number: int
    tags: list[str]
    created_at: str
    updated_at: str


class NeutronPortEnvelope(BaseModel):
    port: NeutronPort


class NeutronPortsEnvelope(BaseModel):
    model_config = ConfigDict(extra="allow")  # ports_links when paged

    ports: list[NeutronPort]
