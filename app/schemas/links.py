"""Bridges and taps as the API shows and accepts them."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from app.schemas.common import (
    Addresses,
    Id,
    LinkNameStr,
    MacStr,
    Mtu,
    Page,
    ProjectIdIn,
    Ref,
    RequestModel,
    ResourceState,
    UpdateModel,
    VlanRef,
)

BRIDGE_MTU = (
    "MTU in bytes the bridge keeps whatever ports join (the kernel would lower it to its "
    "smallest port's). Null: the MTU of its uplink NIC while one is attached, else 1500 (what "
    "the bridge was created with). Its taps without an MTU of their own take it"
)
BRIDGE_MAC = (
    "Pin the bridge's MAC (unicast). Null: the MAC generated at creation (`generated_mac`), "
    "or the uplink NIC's while an uplink with take_mac is attached. Ports joining or leaving "
    "never change it"
)
TAP_MTU = "MTU in bytes. Null: its bridge's MTU (on no bridge: 1500)"
OBSERVED_MAC = "The MAC the kernel reports now (updated as soon as netlink says it changed)"
OBSERVED_MTU = "The MTU in bytes the kernel reports now (updated as soon as netlink says so)"
OBSERVED_OPER_STATE = (
    "Operational state as the kernel reports it now (RFC 2863: up, down, lowerlayerdown, "
    "dormant, unknown, ...), updated as soon as netlink says it changed"
)


def _null_is_none(value: Any) -> Any:
    return [] if value is None else value


def _null_is_false(value: Any) -> Any:
    return False if value is None else value


ISOLATED = (
    "Bridge port isolation, the kernel's port flag (`bridge link set dev X isolated on`, "
    "IFLA_BRPORT_ISOLATED): an isolated port forwards only to ports that are not isolated "
    "(kernel Documentation/networking/bridge.rst), so guests on isolated ports of one bridge "
    "reach the bridge itself (its gateway address) and its other ports (an uplink), but not "
    "each other. Needs a bridge (422 on none); 409 host-lacks-feature where the kernel does "
    "not honour it (GET /v1/host/capabilities: links.port_isolation). null or omitted: false"
)
# null means false, decided here (the schema says null is accepted)
Isolated = Annotated[bool, BeforeValidator(_null_is_false, json_schema_input_type=bool | None)]


# in a create, null means what leaving the field out does (no addresses), as in a PATCH and
# as for mtu, mac and forward_delay; the schema says null is accepted
CreateAddresses = Annotated[
    Addresses,
    BeforeValidator(_null_is_none, json_schema_input_type=Addresses | None),
]
CREATE_ADDRESSES = (
    "Host addresses on the {kind} (IPv4/IPv6 with prefix), each at most once. null or "
    "omitted: none (the same as [])"
)


class BridgeCreate(RequestModel):
    name: LinkNameStr
    stp: bool = Field(False, description="Spanning tree (the how-to: bridge_stp off)")
    forward_delay: float | None = Field(
        None,
        ge=0,
        le=30,
        description="Forward delay in seconds (the how-to: bridge_fd 0). Default: 0 with stp "
        "off, 15 with stp on (the kernel needs 2-30 s while STP runs)",
    )
    mtu: Mtu | None = Field(None, description=BRIDGE_MTU)
    mac: MacStr | None = Field(None, description=BRIDGE_MAC)
    addresses: CreateAddresses = Field(
        default_factory=list, description=CREATE_ADDRESSES.format(kind="bridge")
    )
    project_id: ProjectIdIn = None

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"name": "br0", "stp": False, "forward_delay": 0, "addresses": ["192.168.105.1/24"]}
            ]
        }
    )


class BridgeUpdate(
    UpdateModel,
    created_by=BridgeCreate,
    instead="delete the bridge and create one with the new value",
):
    """Change a bridge; a field left out is unchanged (null: see each field). `name` is
    fixed at creation (422 saying so)."""

    stp: bool = Field(
        False,
        description="Spanning tree on or off; turning it on raises a forward delay under 2 s "
        "to 15 s. null is refused (422)",
    )
    forward_delay: float | None = Field(
        None,
        ge=0,
        le=30,
        description="Forward delay in seconds. null: the default for the bridge's stp after "
        "this change (0 with stp off, 15 with stp on)",
    )
    mtu: Mtu | None = Field(None, description=BRIDGE_MTU)
    mac: MacStr | None = Field(None, description=BRIDGE_MAC)
    addresses: Addresses | None = Field(
        None,
        description="Host addresses on the bridge, replacing the current list. null: none "
        "(the same as [])",
    )

    def resolve_nulls(self, changes: dict[str, Any]) -> dict[str, Any]:
        if "addresses" in changes and changes["addresses"] is None:
            changes["addresses"] = []
        return changes


VIA = (
    "Null: a port of this bridge itself. Else the bridge the port really is in: the own "
    "bridge of one of this trunk's VLANs with the bridge_per_vlan backend (like `br0v20`), "
    "whose ports this trunk's views include, since they carry the trunk's VLAN `vlan`"
)
VIA_VLAN = (
    "The VID of the per-VLAN bridge `via` names (every port there is on that VLAN, "
    "untagged inside that bridge); null for a port of this bridge itself (on a filtering "
    "bridge its VIDs are in GET /v1/bridges/{id}/vlans)"
)


IFNAME = (
    "The kernel's name of this link (read-only, at most 15 characters): the name itself in "
    "the default project; in any other project derived from the id, `kb` (bridge) or `kt` "
    "(tap) and the id's first 13 hex digits, so two projects' links of the same name never "
    "collide on the host"
)


class BridgePort(BaseModel):
    name: str
    ifindex: int
    oper_state: str
    tap_id: str | None = Field(None, description="The tap resource, when the port is ours")
    isolated: bool = Field(
        False,
        description="The port's isolation flag as the kernel reports it now (`bridge link "
        "show`'s `isolated`): it forwards only to ports that are not isolated. For a VM "
        "NIC's tap, the NIC's `isolated` as applied",
    )
    via: str | None = Field(None, description=VIA, examples=["br0v20"])
    vlan: int | None = Field(None, description=VIA_VLAN, examples=[20])


class UplinkSummary(BaseModel):
    interface: str
    phase: str = Field(description="detached, moving, attached, restoring")
    status: str


class Bridge(ResourceState):
    ifname: str = Field(description=IFNAME, examples=["br0", "kb3f2a9c1e77b04"])
    stp: bool
    forward_delay: float
    mtu: int | None = Field(description=BRIDGE_MTU)
    mac: str | None = Field(description="The pinned MAC, or null: then `generated_mac`")
    generated_mac: str = Field(
        description="Generated at creation (locally administered, unicast) and kept for the "
        "bridge's whole life: its MAC whenever none is pinned and no uplink lends its own",
        examples=["02:5e:10:33:7a:c1"],
    )
    addresses: list[str]
    ifindex: int | None = Field(None, description="Kernel index, once created")
    observed_mac: str | None = Field(None, description=OBSERVED_MAC)
    observed_mtu: int | None = Field(None, description=OBSERVED_MTU)
    observed_oper_state: str | None = Field(None, description=OBSERVED_OPER_STATE)
    ports: list[BridgePort] = Field(
        default_factory=list, description="Member ports as the kernel reports them now"
    )
    uplink: UplinkSummary | None = Field(
        None, description="The host NIC in this bridge, if any (details: GET .../uplink)"
    )


class FdbEntry(BaseModel):
    """One learned (or local) MAC of a bridge, like a row of `brctl showmacs`."""

    mac: str
    port: str
    port_index: int
    is_local: bool
    ageing_timer: float | None = Field(None, description="Seconds since last seen")
    vlan: int | None = Field(
        None,
        description="The entry's VLAN id: NDA_VLAN on a VLAN-filtering bridge; the VID of "
        "the per-VLAN bridge for an entry learned there (`via`); null on a bridge without "
        "filtering",
    )
    via: str | None = Field(
        None,
        description="Null: an entry of this bridge's own table. Else the per-VLAN bridge "
        "(bridge_per_vlan backend, like `br0v20`) whose table holds it: the trunk's view "
        "includes the tables of its VLANs' own bridges",
        examples=["br0v20"],
    )


class PortVlan(BaseModel):
    """One VLAN on one port of a bridge, like a row of `bridge -j vlan show`."""

    port: str = Field(description="The port's name; the bridge's own name is its own port")
    vid: int = Field(description="VLAN id, 1-4094")
    pvid: bool = Field(description="Untagged frames entering the port belong to this VLAN")
    untagged: bool = Field(description="Frames of this VLAN leave the port untagged")
    ours: bool = Field(
        description="The port is one kvmnetd plans (the trunk's uplink, the bridge itself, "
        "taps on VLANs); the membership of other ports is never touched"
    )
    planned: bool = Field(description="kvmnetd wants exactly this membership on this port")
    via: str | None = Field(
        None,
        description="Null: a port of this bridge, as its `bridge vlan show` lists it. Else "
        "the own bridge of one of this trunk's bridge_per_vlan VLANs (like `br0v20`) the "
        "port really is in: such a bridge does not filter, every port of it carries that "
        "VLAN untagged, so the row says vid (the VLAN's), pvid and untagged",
        examples=["br0v20"],
    )


class BridgeVlans(BaseModel):
    """Per-port VLAN membership of a bridge (GET /v1/bridges/{id}/vlans): its own ports
    while it filters VLANs, and the ports of its bridge_per_vlan VLANs' own bridges
    (`via`) on either backend."""

    bridge: str = Field(description="The bridge's kernel name (its `ifname`)")
    filtering_available: bool = Field(
        description="Whether this host's kernel has bridge VLAN filtering "
        "(CONFIG_BRIDGE_VLAN_FILTERING); without it `reason` says why and `ports` lists only "
        "the ports of per-VLAN bridges (`via`)"
    )
    vlan_filtering: bool = Field(description="Whether the bridge filters VLANs now")
    default_pvid: int | None = Field(
        None, description="The VLAN a joining port gets as PVID (0: none); null if unknown"
    )
    reason: str | None = None
    ports: list[PortVlan] = Field(default_factory=list)


TAP_VLAN = (
    "The VLAN's id (UUID) or name, never its VID (a number is a 422): the tap is an access "
    "port of that VLAN (untagged on the tap). Its bridge is the VLAN's trunk (`bridge` may be "
    "left out; named, it must be that trunk, else 422); with the bridge_per_vlan backend the "
    "tap joins the VLAN's own bridge. 404 for an unknown VLAN, 409 for one being deleted or "
    "in `error` (with its status_reason)"
)


class TapCreate(RequestModel):
    name: LinkNameStr
    bridge: Ref | None = Field(None, description="Bridge id or name to attach to", examples=["br0"])
    vlan: VlanRef | None = Field(None, description=f"{TAP_VLAN}. Null or omitted: on no VLAN")
    mtu: Mtu | None = Field(None, description=TAP_MTU)
    mac: MacStr | None = None
    addresses: CreateAddresses = Field(
        default_factory=list, description=CREATE_ADDRESSES.format(kind="tap")
    )
    owner_uid: Id | None = Field(None, description="User allowed to open the tap (qemu's)")
    owner_gid: Id | None = None
    multi_queue: bool = False
    vnet_hdr: bool = False
    project_id: ProjectIdIn = None
    isolated: Isolated = Field(False, description=ISOLATED)

    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "tap1", "bridge": "br0"}]})


class TapUpdate(
    UpdateModel,
    created_by=TapCreate,
    instead="delete the tap and create one with the new value",
):
    """Change a tap; a field left out is unchanged (null: see each field). `name` and
    `vnet_hdr` are fixed at creation (422 saying so)."""

    bridge: Ref | None = Field(
        None,
        description="Bridge id or name to attach to; another bridge than its VLAN's trunk "
        "takes the tap off its VLAN (unless `vlan` names one there). null: detach (and off "
        'its VLAN, also next to `"vlan": null`; and not isolated: 422 next to '
        '`"isolated": true`)',
    )
    vlan: VlanRef | None = Field(
        None,
        description=f"{TAP_VLAN}. Applied live, also under a running VM. null: off its VLAN "
        "(it stays on the trunk, untagged)",
    )
    mtu: Mtu | None = Field(None, description=TAP_MTU)
    mac: MacStr | None = Field(
        None, description="Pin the tap's MAC. null: unpin (the tap keeps the kernel's MAC)"
    )
    addresses: Addresses | None = Field(
        None,
        description="Host addresses on the tap, replacing the current list. null: none "
        "(the same as [])",
    )
    owner_uid: Id | None = Field(
        None,
        description="User allowed to open the tap; re-creates the tap, refused (409) while a "
        "VM uses it. null: no owner (only CAP_NET_ADMIN may open it)",
    )
    owner_gid: Id | None = Field(
        None,
        description="Group allowed to open the tap; re-creates the tap, refused (409) while a "
        "VM uses it. null: no group",
    )
    multi_queue: bool = Field(
        False,
        description="Re-creates the tap; refused (409) while a VM uses it. null is refused (422)",
    )
    isolated: bool | None = Field(
        False, description=f"{ISOLATED}. Applied live (no re-create), also under a running VM"
    )

    def resolve_nulls(self, changes: dict[str, Any]) -> dict[str, Any]:
        if "addresses" in changes and changes["addresses"] is None:
            changes["addresses"] = []
        if "isolated" in changes and changes["isolated"] is None:
            changes["isolated"] = False
        return changes


class TapAttach(RequestModel):
    bridge: Ref = Field(description="Bridge id or name", examples=["br0"])


class BridgePage(Page[Bridge]):
    """One page of bridges."""


class Tap(ResourceState):
    ifname: str = Field(description=IFNAME, examples=["tap1", "kt9d04e5b2c1a84"])
    bridge_id: str | None
    vlan_id: str | None = Field(None, description="The VLAN it is an access port of")
    mtu: int | None
    mac: str | None
    addresses: list[str]
    owner_uid: int | None
    owner_gid: int | None
    multi_queue: bool
    vnet_hdr: bool
    isolated: bool = Field(False, description="Bridge port isolation asked for (see the create)")
    ifindex: int | None = None
    observed_mac: str | None = Field(None, description=OBSERVED_MAC)
    observed_mtu: int | None = Field(None, description=OBSERVED_MTU)
    observed_oper_state: str | None = Field(None, description=OBSERVED_OPER_STATE)
    observed_isolated: bool | None = Field(
        None,
        description="The bridge port's isolation flag as netlink reports it now (null: the "
        "tap is no bridge port); a change by hand is repaired at once",
    )


class TapPage(Page[Tap]):
    """One page of taps."""
