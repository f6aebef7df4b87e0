"""Managed networks, their leases, and port forwards as the API accepts and shows them."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from app.domain.networks import (
    DEFAULT_LEASE_SECONDS,
    DOMAIN_MAX,
    DOMAIN_PATTERN,
    LEASE_SECONDS,
    MAX_HOST_ROUTES,
    MAX_NAMESERVERS,
    PORTS,
    validate_domain,
)
from app.domain.segments import SegmentKind
from app.schemas.common import (
    ONE_LINE,
    LinkNameStr,
    Page,
    ProjectIdIn,
    Ref,
    RequestModel,
    ResourceState,
    UpdateModel,
    VlanRef,
    exactly_one_of,
)

Ipv4Str = Annotated[
    str,
    Field(max_length=15, examples=["192.168.100.1"], json_schema_extra={"format": "ipv4"}),
]
DomainStr = Annotated[
    str,
    Field(
        max_length=DOMAIN_MAX,
        examples=["kvm.internal"],
        description="DNS domain: RFC 1123 labels, any case, optional final dot",
        json_schema_extra={"pattern": DOMAIN_PATTERN},
    ),
    AfterValidator(validate_domain),
]
ResourceName = Annotated[
    str,
    Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", examples=["nat0"]),
]
# the range is checked (and explained, with the index in a batch) by the domain
PortNumber = Annotated[
    int, Field(ge=0, le=99999, json_schema_extra={"minimum": PORTS[0], "maximum": PORTS[1]})
]


NAMESERVERS_DOC = (
    f"DNS servers DHCP hands out (option 6), in order: at most {MAX_NAMESERVERS} IPv4 unicast "
    "addresses, none twice. [] or null: the gateway (this network's dnsmasq answers DNS)"
)
HOST_ROUTES_DOC = (
    f"Static routes DHCP hands out (option 121, RFC 3442): at most {MAX_HOST_ROUTES}, "
    "destinations unique. When any is given the default route through the gateway is sent "
    "with them (a client that gets option 121 ignores the router option), unless one of "
    "them is 0.0.0.0/0. [] or null: none"
)
DescriptionStr = Annotated[str, ONE_LINE, Field(max_length=255, examples=["office LAN"])]


class HostRouteIn(RequestModel):
    """A route the guests install: `destination` through `nexthop`."""

    destination: str = Field(
        max_length=18,
        examples=["10.20.0.0/16"],
        description="An IPv4 network in CIDR form without host bits (0.0.0.0/0: the default route)",
    )
    nexthop: Ipv4Str = Field(
        description="A host address of the network's subnet (not its network or broadcast address)"
    )


class HostRouteOut(BaseModel):
    destination: str
    nexthop: str


class DhcpIn(RequestModel):
    enabled: bool = True
    range_start: Ipv4Str | None = Field(None, description="Default: the upper half of the subnet")
    range_end: Ipv4Str | None = None
    lease_time: int = Field(
        DEFAULT_LEASE_SECONDS, ge=LEASE_SECONDS[0], le=LEASE_SECONDS[1], description="Seconds"
    )


class NatIn(RequestModel):
    enabled: bool = True
    out_interface: LinkNameStr | None = Field(
        None, description="Masquerade only what leaves through this interface (default: any)"
    )
    snat_address: Ipv4Str | None = Field(
        None, description="SNAT to this fixed source address instead of masquerading"
    )


class NetworkCreate(RequestModel):
    """Turn one of our bridges, a routed tap or a VLAN into a managed IPv4 network: exactly
    one of `bridge`, `tap` or `vlan`. On a VLAN the gateway lives on the VLAN's L3
    interface (`<bridge>.<vid>` with vlan_filtering, the VLAN's own bridge with
    bridge_per_vlan); dnsmasq and the NAT rules use that interface."""

    model_config = ConfigDict(json_schema_extra={"allOf": exactly_one_of("bridge", "tap", "vlan")})

    name: ResourceName
    bridge: Ref | None = Field(None, description="The bridge: id or name")
    tap: Ref | None = Field(None, description="Or a routed tap: id or name")
    vlan: VlanRef | None = Field(
        None, description="Or a VLAN: id or name, never its VID; 409 while it is in `error`"
    )
    subnet: str = Field(max_length=18, examples=["192.168.100.0/24"])
    gateway: Ipv4Str | None = Field(
        None, description="The link's address and the guests' router (default: first host)"
    )
    nat: NatIn = Field(default_factory=lambda: NatIn.model_validate({}))
    dhcp: DhcpIn = Field(default_factory=lambda: DhcpIn.model_validate({}))
    domain: DomainStr | None = Field(None, description="DNS domain of the guests' names")
    dns_nameservers: list[Ipv4Str] | None = Field(
        None, max_length=MAX_NAMESERVERS, description=NAMESERVERS_DOC
    )
    host_routes: list[HostRouteIn] | None = Field(
        None, max_length=MAX_HOST_ROUTES, description=HOST_ROUTES_DOC
    )
    description: DescriptionStr | None = Field(None, description="Free text. null: none")
    project_id: ProjectIdIn = None

    @model_validator(mode="after")
    def _one_link(self) -> NetworkCreate:
        if [self.bridge, self.tap, self.vlan].count(None) != 2:
            raise ValueError("give exactly one of `bridge`, `tap` or `vlan`")
        return self

    def segment(self) -> tuple[str, str]:
        """(segment kind, id or name) of the one segment named (app.domain.segments)."""
        given = {
            SegmentKind.BRIDGE: self.bridge,
            SegmentKind.TAP: self.tap,
            SegmentKind.VLAN: self.vlan,
        }
        kind, ref = next((k, r) for k, r in given.items() if r is not None)
        return kind.value, ref


class NetworkUpdate(
    UpdateModel,
    created_by=NetworkCreate,
    instead="delete the network and create it again with the new value",
):
    """What can change in place. `subnet`, `gateway` and the link (`bridge`, `tap` or
    `vlan`) are fixed at creation (422 saying so): re-create the network. A field left out
    is unchanged (null: see each field). A change of `dns_nameservers` or `host_routes`
    restarts the network's dnsmasq (leases are kept); clients learn it when they renew."""

    name: ResourceName = Field(
        "",
        description="A new name, unique in the project without regard to case (409 "
        "name-taken). null is refused (422)",
    )

    nat: NatIn = Field(
        default_factory=lambda: NatIn.model_validate({}),
        description="NAT settings, replacing the current ones (a member left out takes its "
        "default). null is refused (422): send {} for the defaults",
    )
    dhcp: DhcpIn = Field(
        default_factory=lambda: DhcpIn.model_validate({}),
        description="DHCP settings, replacing the current ones (a member left out takes its "
        "default). null is refused (422): send {} for the defaults",
    )
    domain: DomainStr | None = Field(
        None, description="DNS domain of the guests' names. null: none"
    )
    dns_nameservers: list[Ipv4Str] | None = Field(
        None, max_length=MAX_NAMESERVERS, description=NAMESERVERS_DOC
    )
    host_routes: list[HostRouteIn] | None = Field(
        None, max_length=MAX_HOST_ROUTES, description=HOST_ROUTES_DOC
    )
    description: DescriptionStr | None = Field(None, description="Free text. null: none")


class NatOut(BaseModel):
    enabled: bool
    out_interface: str | None
    snat_address: str | None


class DhcpOut(BaseModel):
    enabled: bool
    range_start: str
    range_end: str
    lease_time: int


class IsolationOut(BaseModel):
    """What the host dropped because this network's guests sent it to another project's
    managed network (its guests, broadcast or gateway): the counter of the rule `isolate
    <network id>` in chain `from_<network id>` of nftables table `inet kvmnetd`. It counts
    from the last load of that table (any change of the managed networks or forwards)."""

    dropped_packets: int = Field(ge=0, description="Packets dropped")
    dropped_bytes: int = Field(ge=0, description="Their size in bytes (IP header included)")


class Network(ResourceState):
    """A managed network (`status`: pending, active, error, deleting)."""

    bridge_id: str | None
    tap_id: str | None
    vlan_id: str | None = Field(description="The VLAN the network is on (null: none)")
    link: str | None = Field(
        description="The kernel link that carries the gateway (on a VLAN: its L3 interface)"
    )
    subnet: str
    gateway: str
    nat: NatOut
    dhcp: DhcpOut
    domain: str | None
    dns_nameservers: list[str] = Field(
        description="DNS servers DHCP hands out ([]: the gateway, where dnsmasq answers)"
    )
    host_routes: list[HostRouteOut] = Field(
        description="Static routes DHCP hands out (option 121; the default route through "
        "the gateway is sent with them)"
    )
    description: str | None
    dnsmasq_pid: int | None
    restarts: int = Field(description="How often dnsmasq was restarted after it died")
    isolation: IsolationOut | None = Field(
        None,
        description="Traffic to other projects' networks that the host dropped, read live "
        "from nftables by GET /v1/networks/{id} only; null in lists and other answers, and "
        "when the host holds networks of one project only (nothing is isolated then)",
    )


NetworkPage = Page[Network]


class Lease(BaseModel):
    mac: str
    ip: str
    hostname: str | None
    expires_at: dt.datetime | None = Field(description="null: never")
    vm_id: str | None = Field(description="The VM whose NIC has this MAC, if it is ours")
    fixed: bool = Field(
        description="True only when a VM NIC holds its own fixed address (MAC and ip match)"
    )


class PortForwardCreate(RequestModel):
    """Forward host port(s) to a VM NIC's fixed address on a managed network."""

    name: ResourceName | None = Field(None, description="Default: derived from the ports")
    network: Ref = Field(description="The network: id or name")
    vm: Ref = Field(description="The target VM: id or name")
    nic: int | None = Field(
        None, ge=0, le=15, description="The VM's NIC index (default: its NIC on the network)"
    )
    protocol: Literal["tcp", "udp"] = "tcp"
    listen_address: Ipv4Str | None = Field(
        None, description="A host address; null or 0.0.0.0: every address of the host"
    )
    port: PortNumber = Field(description=f"Host port ({PORTS[0]}-{PORTS[1]})")
    end_port: PortNumber | None = Field(
        None, description="Last host port of a range (forwarded to the same port numbers)"
    )
    target_port: PortNumber | None = Field(None, description="Guest port (default: `port`)")
    description: Annotated[str, ONE_LINE] | None = Field(None, max_length=1024)
    project_id: ProjectIdIn = None


class PortForwardBatch(RequestModel):
    """Several forwards at once: all are accepted, or none (the first problem is reported)."""

    port_forwards: list[PortForwardCreate] = Field(min_length=1, max_length=4096)


class PortForward(ResourceState):
    network_id: str
    vm_id: str | None = Field(description="null once the VM is gone (the forward goes too)")
    nic: int | None
    target_address: str | None
    protocol: str
    listen_address: str
    port: int
    end_port: int
    target_port: int
    description: str | None


PortForwardPage = Page[PortForward]


class PortForwardList(BaseModel):
    items: list[PortForward]
