"""Ports (/v1/ports) as the API accepts and shows them: Neutron's port, natively."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from app.schemas.common import (
    ONE_LINE,
    MacStr,
    Page,
    ProjectIdIn,
    Ref,
    RequestModel,
    ResourceState,
    UpdateModel,
    VlanRef,
    exactly_one_of,
)
from app.schemas.networks import ResourceName
from app.schemas.vms import ALLOWED_ADDRESSES, AllowedAddressList

DESCRIPTION_MAX = 255  # Neutron's description length
DEVICE_MAX = 255  # Neutron's device_id and device_owner length

Description = Annotated[str, Field(max_length=DESCRIPTION_MAX), ONE_LINE]
Device = Annotated[str, Field(max_length=DEVICE_MAX), ONE_LINE]

IPV4 = (
    "Its fixed IPv4 address on the managed network of its segment (a static DHCP lease, "
    "served whether or not a VM uses the port): a host of the subnet, not the gateway, inside "
    "or outside the DHCP range; 409 when a VM NIC or another port holds it or another MAC "
    "holds a dynamic lease on it. 422 on a segment without a managed network"
)
FIXED_IP = (
    "true (the default when the segment carries a managed network): the lowest free fixed "
    "address, unless `ipv4` names one; false: no fixed address"
)
PORT_SECURITY = (
    "Anti-spoofing of the port's tap while a VM uses it, as a VM NIC's `port_security` "
    "(GET /v1/vms shows it on the NIC). Null or omitted: on in tenant projects (every project "
    "but `default`)"
)
ADMIN_STATE = (
    "Neutron's admin_state_up. Only true is supported (the port's tap is always up): false is 422"
)


def _admin_up(value: bool) -> bool:
    if value is False:
        raise ValueError("admin_state_up false is not supported: a port's tap is always up")
    return value


# Only true is accepted; the schema says so (const), and false gets its own clear 422.
AdminStateUp = Annotated[bool, AfterValidator(_admin_up), Field(json_schema_extra={"const": True})]


class PortCreate(RequestModel):
    """A port on one L2 segment: exactly one of `bridge` (an untagged port) or `vlan` (an
    access port of the VLAN, on its trunk, like a tap resource on a VLAN). The daemon makes
    its tap (kernel name `tap` + the first 11 hex digits of the port's id)."""

    model_config = ConfigDict(
        json_schema_extra={
            "allOf": exactly_one_of("bridge", "vlan"),
            "examples": [{"name": "p1", "bridge": "br0", "ipv4": "10.10.0.20"}],
        }
    )

    name: ResourceName
    bridge: Ref | None = Field(None, description="The bridge (id or name)")
    vlan: VlanRef | None = Field(None, description="Or the VLAN (id or name, never its VID)")
    mac_address: MacStr | None = Field(
        None,
        description="The guest's MAC. Null or omitted: a generated one (52:54:00:xx:xx:xx). "
        "409 when another port or a VM NIC has it",
    )
    fixed_ip: bool = Field(True, description=FIXED_IP)
    ipv4: str | None = Field(None, max_length=15, description=IPV4)
    device_id: Device = Field("", description="Who uses the port (Neutron's device_id)")
    device_owner: Device = Field("", description="What kind of user (Neutron's device_owner)")
    admin_state_up: AdminStateUp = Field(True, description=ADMIN_STATE)
    description: Description | None = None
    port_security: bool | None = Field(None, description=PORT_SECURITY)
    allowed_addresses: AllowedAddressList | None = Field(None, description=ALLOWED_ADDRESSES)
    project_id: ProjectIdIn = None

    @model_validator(mode="after")
    def _checked(self) -> PortCreate:
        if [self.bridge, self.vlan].count(None) != 1:
            raise ValueError("give exactly one of `bridge` or `vlan`")
        if self.ipv4 is not None and not self.fixed_ip:
            raise ValueError("`ipv4` is a fixed address: not with fixed_ip false")
        return self

    def segment(self) -> tuple[str | None, str | None]:
        return self.bridge, self.vlan


class PortUpdate(
    UpdateModel,
    created_by=PortCreate,
    instead="delete the port and create one with the new value",
):
    """Change a port; a field left out is unchanged (null: see each field)."""

    name: ResourceName = Field("", description="A new name. null is refused (422)")
    description: Description | None = Field(None, description="null: none")
    device_id: Device | None = Field(None, description='null: "" (none)')
    device_owner: Device | None = Field(None, description='null: "" (none)')
    admin_state_up: AdminStateUp = Field(True, description=f"{ADMIN_STATE}. null is refused (422)")
    fixed_ip: bool = Field(
        True,
        description="false: no fixed address (its lease goes); true: the lowest free one "
        "unless it has one. Only while no VM uses the port (409 otherwise). null is refused "
        "(422)",
    )
    ipv4: str | None = Field(
        None,
        max_length=15,
        description=f"{IPV4}. Only while no VM uses the port (409 otherwise). null: the lowest "
        "free one, as at creation (with fixed_ip false: none)",
    )

    @model_validator(mode="after")
    def _checked(self) -> PortUpdate:
        if self.ipv4 is not None and self.fixed_ip is False:
            raise ValueError("`ipv4` is a fixed address: not with fixed_ip false")
        return self

    def resolve_nulls(self, changes: dict[str, Any]) -> dict[str, Any]:
        for field in ("device_id", "device_owner"):
            if field in changes and changes[field] is None:
                changes[field] = ""
        return changes


class FixedIp(BaseModel):
    """One fixed address (Neutron's fixed_ips item; `network_id` is the managed network)."""

    network_id: str
    ip_address: str


class PortUser(BaseModel):
    """The VM NIC that plugs the port."""

    vm_id: str
    vm_name: str
    nic: int = Field(description="The NIC's index in the VM's `nics`")


class Port(ResourceState):
    """A port. `status` is its lifecycle as for every resource (pending until its tap is
    made); `port_status` is Neutron's: DOWN until a VM uses it, ACTIVE while its tap has
    carrier (qemu holds it open), BUILD while pending, ERROR in error."""

    description: str | None
    bridge_id: str | None = Field(description="Its bridge (untagged port), or the VLAN's trunk")
    vlan_id: str | None = Field(description="The VLAN it is an access port of, if any")
    mac_address: str
    fixed_ips: list[FixedIp] = Field(description="Its fixed address (at most one)")
    ipv4: str | None
    network_id: str | None = Field(description="The managed network of its fixed address")
    device_id: str
    device_owner: str
    admin_state_up: bool
    port_security: bool
    allowed_addresses: list[str]
    port_status: Literal["ACTIVE", "DOWN", "BUILD", "ERROR"]
    tap: str = Field(description="The kernel name of its tap", examples=["tap9b1f7c554a3"])
    tap_id: str = Field(description="Its taps row (GET /v1/taps/{id} shows the link)")
    oper_state: str | None = Field(description="The tap's operational state (netlink)")
    binding_host_id: str = Field(description="The host it is bound to (its host name)")
    user: PortUser | None = Field(description="The VM NIC that plugs it; null: none")


class PortPage(Page[Port]):
    """One page of ports."""
