"""VMs as the API accepts and shows them."""

from __future__ import annotations

import datetime as dt
from ipaddress import ip_network
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, model_validator
from pydantic.json_schema import SkipJsonSchema

from app.domain.nics import HostLink, backend_options, field_backends, find_driver
from app.domain.nics.macvtap import MacvtapMode
from app.domain.nics.spec import either
from app.domain.rate_limits import BURST_KIB as BURST_RANGE
from app.domain.rate_limits import RATE_KBPS
from app.domain.vms import (
    MEMORY_MIB,
    MTU_RANGE,
    PORTS,
    QUEUES,
    VCPUS,
    Accelerator,
    Backend,
    Machine,
    PowerState,
    RestartPolicy,
    Vhost,
    VmStatus,
)
from app.schemas.common import (
    Id,
    LinkNameStr,
    MacStr,
    ProjectIdIn,
    Ref,
    RequestModel,
    UpdateModel,
    VlanRef,
    VmNameStr,
    exactly_one_of,
)
from app.schemas.links import ISOLATED, Isolated
from app.schemas.vlans import VlanId

Port = Field(ge=PORTS[0], le=PORTS[1])
NIC_MTU = (
    "MTU in bytes, virtio-net-pci only (422 for other models and for the user backend): "
    "QEMU's host_mtu tells the guest, and the NIC's tap (bridge backend) gets it too. Null: "
    "the guest's default; the tap of a bridge NIC then takes its bridge's MTU"
)

# rate limits (issue 13, app.domain.rate_limits): directions from the guest's view
INGRESS_KBPS = (
    "Rate limit towards the guest in kbit/s (1 kbit = 1000 bits), 8 to 34000000: OpenStack "
    "QoS's bandwidth_limit max_kbps with direction ingress (as seen from the VM), libvirt's "
    "<bandwidth><inbound average> (which libvirt counts in kilobytes/s: this / 8). Shaped by "
    "a tbf qdisc as the root of the NIC's tap, where that traffic leaves the host. Bridge "
    "backend only (422 otherwise). Null or omitted: no limit"
)
EGRESS_KBPS = (
    "Rate limit from the guest in kbit/s (1 kbit = 1000 bits), 8 to 34000000: OpenStack "
    "QoS's max_kbps with direction egress (from the VM), libvirt's <outbound average>. "
    "Applied where that traffic enters the host, on the tap's ingress: a police action "
    "where the kernel has act_police, else redirected to an ifb device shaped by a tbf "
    "(GET /v1/host/capabilities `rate_limit.method` says which). Bridge backend only. Null "
    "or omitted: no limit"
)
BURST_KIB = (
    "The token bucket of both limits in KiB (1024 bytes), 2 to 1048576: how much may pass "
    "at once above the rate (libvirt's `burst`, also KiB; OpenStack's max_burst_kbps is "
    "kilobits: burst_kib = max_burst_kbps * 1000 / 8 / 1024). At least one frame of the "
    "NIC's MTU (1500 when null) plus 18 bytes, and at most 256 s at each rate (422 "
    "otherwise); only with ingress_kbps or egress_kbps. Null or omitted: 100 ms at each "
    "direction's rate, at least 64 KiB (one full-size GSO frame)"
)
RATE_LIMIT_FIELDS = ("ingress_kbps", "egress_kbps", "burst_kib")

QUEUES_DOC = (
    f"Queue pairs, {QUEUES[0]} to {QUEUES[1]}: above 1, a multi-queue tap (one descriptor per "
    "queue) and virtio-net's mq with 2 MSI-X vectors per pair + 2; virtio-net-pci on the "
    "bridge or tap backend only (422 otherwise). The guest's driver sets up as many pairs "
    "as it has vCPUs, up to this"
)
VHOST_DOC = (
    "vhost-net (kernel drivers/vhost, QEMU `-netdev tap,vhost=`): the NIC's packets move "
    "between its tap and the guest in a kernel thread instead of qemu. `auto`: where this "
    "host's /dev/vhost-net works (GET /v1/host/capabilities `vhost_net`, whose probe loads "
    "the vhost_net module) and the model is virtio-net-pci on a tap-backed backend; `on`: "
    "always (409 host-lacks-feature with the probe's reason where it does not work, 422 on "
    "another model or a backend without a tap); `off`: never. The daemon opens "
    "/dev/vhost-net once per queue and hands qemu the descriptors (vhostfd=). qemu starts "
    "vhost only once the guest's driver has started the device; whether it runs it: "
    "`vhost` in GET /v1/vms/{id}/devices"
)


def _null_is_auto(value: Vhost | None) -> Vhost:
    """A NIC's `vhost` null means what leaving it out does (auto), as the other options'."""
    return Vhost.AUTO if value is None else value


# offloads (issue 13, app.domain.nics.offloads)
CHECKSUM = (
    "Partial checksums both ways (virtio VIRTIO_NET_F_CSUM and VIRTIO_NET_F_GUEST_CSUM; "
    "QEMU's virtio-net properties csum and guest_csum). False turns tso and gso off too "
    "(virtio 1.2, 5.1.3.1: segmentation requires checksum offload)"
)
TSO = (
    "Segmentation offload of what the guest sends: it hands over segments of up to 64 KiB "
    "and the host cuts them (VIRTIO_NET_F_HOST_TSO4/6, _HOST_ECN, _HOST_UFO; QEMU's "
    "host_tso4, host_tso6, host_ecn, host_ufo). True needs checksum offload (422 with "
    "checksum false)"
)
GSO = (
    "Large receive: the host may hand the guest GSO packets unsegmented "
    "(VIRTIO_NET_F_GUEST_TSO4/6, _GUEST_ECN, _GUEST_UFO; QEMU's guest_tso4, guest_tso6, "
    "guest_ecn, guest_ufo). qemu applies what the guest accepted to the tap (TUNSETOFFLOAD), "
    "so the tap's offloads follow. True needs checksum offload (422 with checksum false)"
)
OFFLOADS = (
    "virtio-net-pci on a backend with a kernel tap (bridge, tap, port, macvtap; 422 "
    "otherwise): checksum, TSO and GSO on or off. Null or omitted, and each switch null: "
    "QEMU's default (on). GET /v1/vms/{id}/devices shows what the guest negotiated"
)


class OffloadsIn(RequestModel):
    """A virtio NIC's offload switches; null: QEMU's default (on)."""

    checksum: bool | None = Field(None, description=CHECKSUM)
    tso: bool | None = Field(None, description=TSO)
    gso: bool | None = Field(None, description=GSO)


class OffloadsOut(BaseModel):
    """A NIC's offload switches as stored (null: QEMU's default, on)."""

    checksum: bool | None = Field(None, description=CHECKSUM)
    tso: bool | None = Field(None, description=TSO)
    gso: bool | None = Field(None, description=GSO)


class NegotiatedOffloads(BaseModel):
    """Which offloads the guest's driver accepted (each: all its virtio feature bits)."""

    checksum: bool = Field(description="VIRTIO_NET_F_CSUM and VIRTIO_NET_F_GUEST_CSUM")
    tso: bool = Field(description="VIRTIO_NET_F_HOST_TSO4 and VIRTIO_NET_F_HOST_TSO6")
    gso: bool = Field(description="VIRTIO_NET_F_GUEST_TSO4 and VIRTIO_NET_F_GUEST_TSO6")


VLAN_ACCESS = (
    "bridge backend: the VLAN (id or name) the NIC is an access port of (untagged in the "
    "guest). Its bridge is the VLAN's trunk; with the bridge_per_vlan backend the NIC's tap "
    "joins the VLAN's own bridge instead. Its id (UUID) or name, never its VID (a number is a "
    "422). 404 for an unknown VLAN, 409 for one being deleted or in `error` (with its "
    "status_reason). "
    "Null or omitted: no VLAN"
)


def _tagged_vids(vids: list[int]) -> list[int]:
    """A trunk NIC's tagged VIDs: at least one, each once (each is 1-4094: VlanId)."""
    if not vids:
        raise ValueError(
            "vlan_tagged must list at least one VLAN id (null or omitted: not a trunk NIC)"
        )
    repeated = sorted({v for v in vids if vids.count(v) > 1})
    if repeated:
        raise ValueError(f"vlan_tagged lists VLAN {repeated[0]} more than once")
    return vids


# checked here, before any bridge is looked at (the domain checks again: app.domain.vlans)
VlanTagged = Annotated[
    list[VlanId],
    Field(max_length=64, json_schema_extra={"minItems": 1, "uniqueItems": True}),
    AfterValidator(_tagged_vids),
]

VLAN_TAGGED = (
    "bridge backend, trunk NIC: the VIDs (1-4094, each once) of VLANs on `bridge` that "
    "reach the guest tagged (802.1Q inside the guest). Only with the vlan_filtering backend "
    "(422 with the reason for bridge_per_vlan, which carries one VLAN per bridge, "
    "untagged); 422 for a VID with no VLAN on that bridge. Null or omitted: not a trunk NIC"
)


def _allowed_address(text: str) -> str:
    """An IPv4 or IPv6 address or prefix (CIDR), without host bits or a zone index (RFC 4007
    `%eth0`: it names the guest's own interface, meaningless here); shown canonically."""
    if "%" in text:
        raise ValueError(f"{text!r}: a zone index (%...) is not part of an address to allow")
    try:
        network = ip_network(text)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not an IPv4/IPv6 address or CIDR prefix: {exc}") from None
    return (
        str(network.network_address) if network.prefixlen == network.max_prefixlen else str(network)
    )


def _distinct(items: list[str]) -> list[str]:
    repeated = sorted({a for a in items if items.count(a) > 1})
    if repeated:
        raise ValueError(f"allowed_addresses lists {repeated[0]} more than once")
    return items


AllowedAddress = Annotated[
    str,
    Field(min_length=2, max_length=43, examples=["192.0.2.0/24"]),
    AfterValidator(_allowed_address),
]
AllowedAddressList = Annotated[
    list[AllowedAddress], Field(max_length=16), AfterValidator(_distinct)
]
PORT_SECURITY = (
    "Anti-spoofing (Neutron's port_security_enabled): the guest may send only from this NIC's "
    "MAC and its own addresses (its fixed ipv4, the address its DHCP lease shows, its EUI-64 "
    "IPv6 link-local address, `allowed_addresses`), ARP included; DHCP server replies (UDP "
    "source port 67/547) and IPv6 router advertisements are dropped; every dropped frame is "
    "counted (GET shows the counters). Enforced by nftables on the frames its tap brings into "
    "a bridge: for the bridge backend and a tap resource on a bridge (422 for the user, "
    "socket and hub backends, a hub join, a trunk NIC, and a tap resource on no bridge). A NIC "
    "whose IPv4 address is not known (no managed network, no allowed_addresses) may send "
    "only DHCP client requests over IPv4 until then. A guest whose IPv6 link-local address "
    "is not derived from its MAC (RFC 7217 stable privacy addresses) needs it in "
    "allowed_addresses. Null or omitted: on for a VM of a tenant project (any project but "
    "`default`) where it can apply, off in `default` (the operator's own guests)"
)
ALLOWED_ADDRESSES = (
    "With port_security: further IPv4/IPv6 addresses or CIDR prefixes the guest may send "
    "from (Neutron's allowed_address_pairs, without their MAC: always the NIC's own), e.g. a "
    "guest addressed by a LAN's DHCP server the daemon does not see. At most 16; 422 "
    "without port_security. Null or omitted: none"
)


class PortForwardIn(RequestModel):
    """The how-to's `-redir tcp:5555::22`."""

    protocol: Literal["tcp", "udp"] = "tcp"
    host_address: str = Field("127.0.0.1", max_length=15, examples=["127.0.0.1"])
    host_port: int = Port
    guest_port: int = Port
    guest_address: str | None = Field(None, max_length=15)


class UserNetIn(RequestModel):
    network: str = Field("10.0.2.0/24", max_length=18)
    host: str = Field("10.0.2.2", max_length=15)
    dns: str = Field("10.0.2.3", max_length=15)
    restrict: bool = False
    forwards: list[PortForwardIn] = Field(default_factory=list, max_length=64)


class SocketNetIn(RequestModel):
    """listen: the daemon picks a free loopback port; connect: name the peer NIC as
    `<vm name or id>/<nic index>`; mcast: a multicast group and port (stays on loopback)."""

    mode: Literal["listen", "connect", "mcast"]
    peer: str | None = Field(None, max_length=80, examples=["vm1/0"])
    group: str | None = Field(None, max_length=15, examples=["230.0.0.1"])
    port: int | None = Field(None, ge=PORTS[0], le=PORTS[1])


# the JSON type of each backend's option (which backend needs which: its driver says,
# app.domain.nics.backend_options)
_OPTION_TYPE = {
    "bridge": "string",
    "tap": "string",
    "port": "string",
    "socket": "object",
    "hub": "integer",
    "parent": "string",
}


def _backend_alternatives(schema: dict[str, Any]) -> None:
    """The NIC's alternatives as oneOf, one branch per backend: `backend` names it and the
    option it needs is present and not null (what _backend_options checks)."""
    branches: list[dict[str, Any]] = []
    options = backend_options()
    for backend in Backend:
        option = options.get(backend)
        branch: dict[str, Any] = {
            "required": ["backend"],
            "properties": {"backend": {"const": backend.value}},
        }
        if backend is Backend.BRIDGE:  # `bridge`, or `vlan` (its trunk is the bridge)
            branch["anyOf"] = [
                {"required": [name], "properties": {name: {"type": "string"}}}
                for name in ("bridge", "vlan")
            ]
        elif option is not None:
            branch["required"].append(option)
            branch["properties"][option] = {"type": _OPTION_TYPE[option]}
        branches.append(branch)
    schema["allOf"] = [{"oneOf": branches}]  # in allOf: SDKs keep one NicIn model


class NicIn(RequestModel):
    model: str | None = Field(
        "virtio-net-pci",
        max_length=32,
        description="The guest NIC; null for a backend that only joins `hub` (with the hub "
        "NICs on it, like the how-to's -net tap and -net socket on one vlan)",
    )
    mac: MacStr | None = Field(None, description="Allocated (unique) when omitted")
    backend: Backend = Field(strict=False)  # FastAPI validates JSON as Python: take the value
    bridge: Ref | None = Field(
        None,
        description="bridge backend: id or name. May be omitted with `vlan` (then it is the "
        "VLAN's trunk); given with `vlan`, it must be that trunk (422 otherwise)",
    )
    vlan: VlanRef | None = Field(
        None,
        description=VLAN_ACCESS,
        examples=["tenant-a"],
    )
    vlan_tagged: VlanTagged | None = Field(
        None,
        description=VLAN_TAGGED,
        examples=[[10, 20]],
    )
    native_vlan: VlanId | None = Field(
        None,
        description="bridge backend, trunk NIC (with `vlan_tagged`): the VID (1-4094) of a VLAN "
        "on the bridge that crosses the NIC untagged (its PVID); not also in `vlan_tagged`. "
        "Null or omitted: none (untagged frames are dropped)",
    )
    tap: Ref | None = Field(None, description="tap backend: id or name")
    port: Ref | None = Field(
        None,
        description="port backend: the port (id or name, GET /v1/ports). qemu gets the port's "
        "tap; the guest's MAC is the port's (`mac`, if given, must be it: 422 otherwise), and "
        "so is its fixed address (`ipv4` and `port_security` are the port's: 422 here). 409 "
        "when another VM uses the port",
    )
    # macvtap backend (issue 13)
    parent: LinkNameStr | None = Field(
        None,
        description="macvtap backend: the host interface the NIC's macvtap sits on (a host NIC "
        "or any Ethernet link, e.g. eth0). 409 with the reason when it does not exist, is "
        "loopback, not Ethernet, a bridge port, or one of kvmnetd's own links",
        examples=["eth0"],
    )
    macvtap_mode: MacvtapMode | None = Field(
        None,
        strict=False,
        description="macvtap backend: bridge, vepa, private or passthru (ip-link(8)); null or "
        "omitted: bridge. In bridge mode the guests on one parent reach each other and the "
        "parent's LAN, but never the host's own address on the parent (kernel behaviour)",
    )
    # sriov backend (issue 13)
    pf: LinkNameStr | None = Field(
        None,
        description="sriov backend: the SR-IOV physical function (its interface, e.g. enp1s0f0; "
        "GET /v1/host/sriov) whose free virtual function the NIC takes. Null or omitted: the "
        "first PF with a free VF. 409 when it has none (PUT /v1/host/sriov/{pf} makes more)",
        examples=["enp1s0f0"],
    )
    vf_vlan: VlanId | None = Field(
        None,
        description="sriov backend: the VLAN (802.1Q VID, 1-4094) the PF's switch puts the VF's "
        "untagged frames on (ip-link(8) `vf N vlan`; Neutron's segmentation_id). Null or "
        "omitted: none",
        examples=[100],
    )
    spoof_check: bool | None = Field(
        None,
        description="sriov backend: the PF drops frames from the VF whose source MAC is not the "
        "NIC's (ip-link(8) `vf N spoofchk`). Null or omitted: on",
    )
    trust: bool | None = Field(
        None,
        description="sriov backend: the VF may change its MAC and enter promiscuous or "
        "all-multicast mode (ip-link(8) `vf N trust`). Null or omitted: off",
    )
    user: UserNetIn | None = None
    socket: SocketNetIn | None = None
    hub: int | None = Field(None, ge=0, le=1024, description="hub backend, or a hub join")
    queues: int = Field(1, ge=QUEUES[0], le=QUEUES[1], description=QUEUES_DOC)
    mtu: int | None = Field(None, ge=MTU_RANGE[0], le=MTU_RANGE[1], description=NIC_MTU)
    vhost: Annotated[Vhost | None, AfterValidator(_null_is_auto)] = Field(
        Vhost.AUTO, strict=False, description=f"{VHOST_DOC}. Null or omitted: auto"
    )
    offloads: OffloadsIn | None = Field(None, description=OFFLOADS)
    link_up: bool = True
    isolated: Isolated = Field(
        False,
        description=f"bridge backend (its tap; also on a VLAN or a managed network's "
        f"bridge): {ISOLATED}. 422 on other backends (a tap resource is isolated itself: "
        "PATCH /v1/taps/{id} with `isolated`). Fixed at creation, like `nics`",
    )
    ipv4: str | None = Field(
        None,
        max_length=15,
        description="On a managed network's bridge or tap: this fixed address instead of the "
        "lowest free one (served by DHCP as a static lease; it may lie in the DHCP range: "
        "dnsmasq never hands out a reserved address). 409 when another NIC or port has it "
        "or another MAC holds a dynamic lease on it (the problem's `holder` names the "
        "lease's MAC, hostname and VM)",
    )
    port_security: bool | None = Field(None, description=PORT_SECURITY)
    allowed_addresses: AllowedAddressList | None = Field(
        None, description=ALLOWED_ADDRESSES, examples=[["192.0.2.10", "2001:db8::/64"]]
    )
    # rate limits (issue 13): PATCH /v1/vms/{id}/nics/{index} changes them on a running VM
    ingress_kbps: int | None = Field(
        None, ge=RATE_KBPS[0], le=RATE_KBPS[1], description=INGRESS_KBPS, examples=[10000]
    )
    egress_kbps: int | None = Field(
        None, ge=RATE_KBPS[0], le=RATE_KBPS[1], description=EGRESS_KBPS, examples=[10000]
    )
    burst_kib: int | None = Field(None, ge=BURST_RANGE[0], le=BURST_RANGE[1], description=BURST_KIB)

    model_config = ConfigDict(json_schema_extra=_backend_alternatives)

    @model_validator(mode="after")
    def _backend_options(self) -> NicIn:
        needed = backend_options().get(self.backend)
        if self.backend is Backend.BRIDGE:
            if self.bridge is None and self.vlan is None:
                raise ValueError("the bridge backend needs `bridge` or `vlan`")
        elif needed is not None and getattr(self, needed) is None:
            raise ValueError(f"the {self.backend.value} backend needs `{needed}`")
        self._other_backends_fields()
        self._vlan_fields()
        self._isolation()
        self._rate_limits()
        self._macvtap_fields()
        self._sriov_fields()
        return self

    def _other_backends_fields(self) -> None:
        """A field of other backends (`bridge` on a user NIC, `tap` on an sriov one, ...) is
        422 naming who takes it, never dropped; left out or null it is not there. `link_up`
        false is QEMU's set_link on its netdev: a backend whose guest device is passed
        through (the sriov backend's VF) has none."""
        backend = self.backend.value
        for name, owners in field_backends().items():
            if getattr(self, name, None) is not None and backend not in owners:
                why = f" ({OTHER_FIELD_WHY[name]})" if name in OTHER_FIELD_WHY else ""
                raise ValueError(
                    f"`{name}` is for the {either(owners)} backend{why}, not {backend} "
                    "(leave it out)"
                )
        driver = find_driver(backend)
        if not self.link_up and driver is not None and driver.device_model is not None:
            raise ValueError(
                f"`link_up` false needs a QEMU netdev (set_link); the {backend} backend's "
                f"guest device is {driver.device_model}, passed through whole"
            )

    def _rate_limits(self) -> None:
        """Limits are tc on the NIC's own tap (the bridge backend's VM_TAP); a burst needs
        a rate."""
        limits = [f for f in RATE_LIMIT_FIELDS if getattr(self, f) is not None]
        if not limits:
            return
        driver = find_driver(self.backend)
        if driver is None or driver.host_link is not HostLink.VM_TAP:
            raise ValueError(
                f"`{limits[0]}` is for NICs whose tap the VM makes for itself (the bridge "
                f"backend); a {self.backend.value} backend NIC has none"
            )
        if limits == ["burst_kib"]:
            raise ValueError("burst_kib needs ingress_kbps or egress_kbps")

    def _macvtap_fields(self) -> None:
        if self.backend is Backend.MACVTAP:
            return
        for name in ("parent", "macvtap_mode"):
            if getattr(self, name) is not None:
                raise ValueError(f"`{name}` is for the macvtap backend")

    def _sriov_fields(self) -> None:
        """pf, vf_vlan, spoof_check and trust are the sriov backend's; its guest device is
        the VF itself (vfio-pci), so a `model` given is that or null."""
        if self.backend is not Backend.SRIOV:
            for name in ("pf", "vf_vlan", "spoof_check", "trust"):
                if getattr(self, name) is not None:
                    raise ValueError(f"`{name}` is for the sriov backend")
            return
        if "model" in self.model_fields_set and self.model not in (None, "vfio-pci"):
            raise ValueError(
                "the sriov backend passes the VF itself to the guest (vfio-pci): leave `model` "
                f"out, not {self.model!r}"
            )
        if self.hub is not None:
            raise ValueError("`hub` is not for the sriov backend (the VF is no QEMU netdev)")
        emulated = [
            name
            for name, given in (
                ("queues", self.queues != 1),
                ("mtu", self.mtu is not None),
                ("vhost", self.vhost is Vhost.ON),
                ("port_security", self.port_security is True),  # spoof_check is the VF's
                ("allowed_addresses", self.allowed_addresses is not None),
            )
            if given
        ]
        if emulated:
            raise ValueError(
                f"`{emulated[0]}` is not for the sriov backend: the VF itself is the guest's "
                "NIC (its queues and MTU are the guest driver's, its anti-spoofing is "
                "`spoof_check`)"
            )

    def _isolation(self) -> None:
        """Isolation is the flag of a bridge port the NIC's own tap is (the bridge backend's
        VM_TAP); a tap resource carries its own; other backends have no bridge port."""
        driver = find_driver(self.backend)
        if not self.isolated or (driver is not None and driver.host_link is HostLink.VM_TAP):
            return
        if driver is not None and driver.host_link is HostLink.TAP:
            raise ValueError(
                "`isolated` on a tap backend NIC: the tap resource is isolated itself "
                '(PATCH /v1/taps/{id} {"isolated": true})'
            )
        raise ValueError(
            f"`isolated` is for NICs whose tap is a bridge port (the bridge backend); the "
            f"{self.backend.value} backend has none"
        )

    def _vlan_fields(self) -> None:
        """`vlan` (access) and `vlan_tagged` (trunk) are the bridge backend's and exclude
        each other; a trunk NIC names its bridge; `native_vlan` belongs to a trunk NIC."""
        vlan_fields = [f for f in ("vlan", "vlan_tagged", "native_vlan") if getattr(self, f)]
        if vlan_fields and self.backend is not Backend.BRIDGE:
            raise ValueError(
                f"`{vlan_fields[0]}` is for the bridge backend (a tap resource joins a VLAN "
                "itself: POST /v1/taps with `vlan`)"
            )
        if self.vlan is not None and self.vlan_tagged is not None:
            raise ValueError(
                "`vlan` (an access port of one VLAN) and `vlan_tagged` (a trunk NIC) exclude "
                "each other"
            )
        if self.vlan_tagged is not None and self.bridge is None:
            raise ValueError("a trunk NIC (`vlan_tagged`) needs `bridge`: the trunk")
        if self.native_vlan is not None and self.vlan_tagged is None:
            raise ValueError("`native_vlan` belongs to a trunk NIC: give `vlan_tagged` too")


# what a field of only some backends is, where its name does not say it
OTHER_FIELD_WHY = {"ipv4": "a fixed address on a managed network's bridge or tap"}


def _needs_kernel(option: str) -> dict[str, Any]:
    return {
        "if": {"required": [option], "properties": {option: {"type": "string"}}},
        "then": {"required": ["kernel"], "properties": {"kernel": {"type": "string"}}},
    }


AbsolutePath = Field(
    None, max_length=4096, description="Absolute path", json_schema_extra={"pattern": "^/"}
)


def _no_nul(path: str) -> str:
    """A host path never holds a NUL byte (the kernel's paths are C strings: 422 here, not
    a failure where the path is resolved or handed to qemu)."""
    if "\0" in path:
        raise ValueError("a path cannot contain a NUL byte")
    return path


HostPath = Annotated[str, AfterValidator(_no_nul)]


_SNAPSHOT_NEEDS_DISK: JsonValue = {
    "if": {"required": ["snapshot"], "properties": {"snapshot": {"const": True}}},
    "then": {"required": ["disk"], "properties": {"disk": {"type": "string"}}},
}
_NETWORK_BOOT: JsonValue = {"required": ["network"], "properties": {"network": {"const": True}}}


class BootIn(RequestModel):
    """Exactly one boot source: `kernel` (with optional `initrd` and `cmdline`), `disk`, or
    `network: true`."""

    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                *exactly_one_of("kernel", "disk", also=[_NETWORK_BOOT]),
                _needs_kernel("initrd"),
                _needs_kernel("cmdline"),
                _SNAPSHOT_NEEDS_DISK,
            ],
        }
    )

    kernel: HostPath | None = AbsolutePath
    initrd: HostPath | None = AbsolutePath
    cmdline: str | None = Field(None, max_length=4096, description="The kernel's command line")
    disk: HostPath | None = AbsolutePath
    snapshot: bool = Field(
        False,
        description="Disk boots only: qemu's `-drive snapshot=on` (the guest's writes go to "
        "a temporary file; the image stays unchanged). 422 with a kernel or network boot.",
    )
    network: bool = Field(
        False,
        description="PXE: the firmware (SeaBIOS) boots from the VM's first NIC whose model has "
        "an iPXE option ROM (virtio-net-pci, e1000, rtl8139, ne2k_pci, pcnet; QEMU's "
        "efi-<model>.rom from Debian's ipxe-qemu): DHCP on that NIC's network, then the boot "
        "file the DHCP server names (TFTP or HTTP; kvmnetd's own DHCP names none: bring a PXE "
        "server). SeaBIOS's and iPXE's screen text go to the VM's console. After a failed boot "
        "SeaBIOS retries every 60 s. Excludes kernel and disk; a VM that boots from the "
        "network keeps a NIC it can boot from (removing the last is 409).",
    )


class RunAsIn(RequestModel):
    """The user qemu runs as instead of the daemon's unprivileged qemu user. `{"uid": 0}` is
    root: only for a VM that really needs it (qemu keeps its seccomp sandbox)."""

    uid: Id
    gid: Id | None = Field(
        None, description="Primary group; null or omitted: the same number as uid"
    )


class BootOut(BaseModel):
    """How the VM boots, as stored (PATCH `boot` replaces it whole): one of `kernel` (with
    `initrd`, `cmdline`), `disk` or `network` (the fields as in BootIn)."""

    kernel: str | None = Field(
        default=None, description="The kernel qemu boots (-kernel); null: none"
    )
    initrd: str | None = Field(default=None, description="Its initrd (-initrd); null: none")
    cmdline: str | None = Field(default=None, description="Its command line (-append); null: none")
    disk: str | None = Field(default=None, description="The raw disk image booted; null: none")
    snapshot: bool = Field(default=False, description="The disk is used with -drive snapshot=on")
    network: bool = Field(default=False, description="PXE through the boot NIC's iPXE option ROM")


class RunAsOut(BaseModel):
    uid: int
    gid: int


class QemuUserOut(BaseModel):
    """Who the running qemu really is: its real uid/gid read from /proc/PID/status."""

    uid: int
    gid: int
    name: str | None = Field(None, description="The uid's name in the passwd database")


class VmCreate(RequestModel):
    name: VmNameStr
    vcpus: int = Field(1, ge=VCPUS[0], le=VCPUS[1])
    memory_mib: int = Field(256, ge=MEMORY_MIB[0], le=MEMORY_MIB[1])
    machine: Machine = Field(Machine.PC, strict=False)
    accelerator: Accelerator = Field(Accelerator.AUTO, strict=False)
    boot: BootIn
    nics: list[NicIn] = Field(default_factory=list, max_length=16)
    power_state: PowerState = Field(PowerState.RUNNING, strict=False)
    restart_policy: RestartPolicy = Field(RestartPolicy.NEVER, strict=False)
    run_as: RunAsIn | None = Field(
        None,
        description="Run qemu as this uid/gid; null or omitted: the daemon's unprivileged "
        "qemu user (setting qemu_user, default kvmnetd-qemu)",
    )
    project_id: ProjectIdIn = None


class VmPatch(
    UpdateModel,
    created_by=VmCreate,
    instead="delete the VM and create it again with the new value",
    elsewhere={"power_state": "POST /v1/vms/<id>/start, /stop or /kill changes it"},
):
    """Change a VM. Omitted fields keep their value; null sets a field to its default at
    create (named per field); `boot` has no default (null is 422). `name` and `nics` are
    fixed at creation, `power_state` is changed by the start, stop and kill actions (422
    saying so). restart_policy applies
    at once; the other fields are read by qemu at start: a running VM keeps what it was
    started with and shows `restart_pending: true` until its next start (stop and start,
    or a policy restart). A reboot (guest reset) does not apply them. Answers 200 with the
    VM (202 while the worker has not seen the change; ?wait= waits for it)."""

    vcpus: int | None = Field(None, ge=VCPUS[0], le=VCPUS[1], description="null: 1")
    memory_mib: int | None = Field(
        None, ge=MEMORY_MIB[0], le=MEMORY_MIB[1], description="MiB; null: 256"
    )
    machine: Machine | None = Field(None, strict=False, description="null: pc")
    accelerator: Accelerator | None = Field(None, strict=False, description="null: auto")
    boot: BootIn | SkipJsonSchema[None] = Field(
        None, description="Replaces the whole boot section (not nullable)"
    )
    restart_policy: RestartPolicy | None = Field(None, strict=False, description="null: never")
    run_as: RunAsIn | None = Field(None, description="null: the daemon's unprivileged qemu user")

    @model_validator(mode="after")
    def _boot_not_null(self) -> VmPatch:
        if "boot" in self.model_fields_set and self.boot is None:
            raise ValueError("boot cannot be null: omit it to keep the boot section")
        return self


PATCH_DEFAULTS: dict[str, object] = {
    "vcpus": 1,
    "memory_mib": 256,
    "machine": Machine.PC,
    "accelerator": Accelerator.AUTO,
    "restart_policy": RestartPolicy.NEVER,
    "run_as": None,
}


class DropCounter(BaseModel):
    packets: int = Field(description="Frames dropped")
    bytes: int = Field(description="Their size in bytes (as the bridge saw them)")


class PortSecurityState(BaseModel):
    """A protected NIC's anti-spoofing rules, read from the kernel (`nft -j list table bridge
    kvmnetd`) at the request."""

    enforced: bool = Field(
        description="Its chain holds the rules the daemon planned and the bridge table sends "
        "its tap's frames to it"
    )
    reason: str | None = Field(
        None, description="Why not (or why the daemon's last load of its rules failed)"
    )
    dropped: DropCounter = Field(description="Every frame from the guest its rules dropped")
    dropped_by: dict[str, DropCounter] = Field(
        default_factory=dict,
        description="The same by rule: mac (another source MAC), arp (another sender MAC or "
        "IP), ipv4, ipv6 (another source address), dhcp-server, router-advert, other (any "
        "other ethertype). Counters restart when the NIC's rules are reloaded",
    )


class NicOut(BaseModel):
    id: str = Field(description="The NIC's id (as in an in-use problem's `dependents`)")
    index: int = Field(
        description="The NIC's index, its own for life (qemu's device nic<index>): removing "
        "another NIC never shifts it, and the VM never gives it twice"
    )
    model: str | None
    hub: int | None = None
    mac: str
    backend: Backend
    tap_name: str | None
    bridge_id: str | None
    tap_id: str | None
    port: str | None = Field(None, description="port backend: the port's id")
    parent: str | None = Field(None, description="macvtap backend: its host interface")
    macvtap_mode: MacvtapMode | None = Field(None, description="macvtap backend: its mode")
    pf: str | None = Field(None, description="sriov backend: its physical function")
    vf: str | None = Field(None, description="sriov backend: its VF's PCI address")
    vf_index: int | None = Field(None, description="sriov backend: its VF's index on the PF")
    vf_vlan: int | None = Field(
        None,
        description="sriov backend: the VLAN (802.1Q VID) the PF puts the VF's untagged frames "
        "on (ip-link(8) `vf N vlan VLANID`, set at each launch); null: none (the kernel's "
        "VLAN 0, shown as null in GET /v1/host/sriov too)",
    )
    spoof_check: bool | None = Field(None, description="sriov backend: the VF's spoof check")
    trust: bool | None = Field(None, description="sriov backend: whether the VF is trusted")
    vlan_id: str | None = Field(None, description="The VLAN it is an access port of")
    vlan_tagged: list[int] = Field(
        default_factory=list, description="Trunk NIC: the VIDs it carries tagged ([]: none)"
    )
    native_vlan: int | None = Field(None, description="Trunk NIC: its untagged VID (PVID)")
    queues: int = Field(description=QUEUES_DOC)
    mtu: int | None = Field(None, description=NIC_MTU)
    vhost: Vhost = Field(description=VHOST_DOC)
    offloads: OffloadsOut = Field(description=OFFLOADS)
    link_up: bool
    isolated: bool = Field(
        False, description="Its tap is an isolated bridge port (IFLA_BRPORT_ISOLATED)"
    )
    network_id: str | None = Field(None, description="The managed network the NIC is on")
    ipv4: str | None = Field(
        None,
        description="Its fixed address there (a port backend NIC: null; the port's "
        "`fixed_ips` say it, GET /v1/ports/{id})",
    )
    observed_ipv4: str | None = Field(
        None,
        description="The address its MAC holds in the network's DHCP leases (null: no "
        "lease); checked at every pass of the network worker",
    )
    address_status_reason: str | None = Field(
        None,
        description="Set when the NIC holds another address than its fixed one (a lease from "
        "before its static lease): its port forwards are withheld until it renews",
    )
    port_security: bool = Field(False, description=PORT_SECURITY)
    allowed_addresses: list[str] = Field(default_factory=list, description=ALLOWED_ADDRESSES)
    ingress_kbps: int | None = Field(None, description=INGRESS_KBPS)
    egress_kbps: int | None = Field(None, description=EGRESS_KBPS)
    burst_kib: int | None = Field(None, description=BURST_KIB)
    port_security_state: PortSecurityState | None = Field(
        None,
        description="Observed, with port_security on and only in GET /v1/vms/{id}: the NIC's "
        "rules as the kernel holds them now (null in lists and with port_security off)",
    )


class Vm(BaseModel):
    """A VM: desired shape and power state, and what its qemu is doing (`status`: pending,
    starting, running, stopping, stopped, crashed, error, deleting)."""

    id: str
    name: str
    project_id: str = Field(description="The project the VM belongs to (fixed at creation)")
    status: VmStatus
    status_reason: str | None = None
    generation: int
    observed_generation: int
    created_at: dt.datetime
    updated_at: dt.datetime
    vcpus: int
    memory_mib: int
    machine: Machine
    accelerator: Accelerator
    accelerator_used: Accelerator | None = Field(None, description="What the VM really got")
    power_state: PowerState
    restart_policy: RestartPolicy
    boot: BootOut = Field(default_factory=BootOut, description="How qemu boots the VM")
    pid: int | None = None
    started_at: dt.datetime | None = None
    exit_code: int | None = None
    restarts: int = 0
    run_as: RunAsOut | None = Field(
        None, description="The uid/gid asked for; null: the daemon's unprivileged qemu user"
    )
    user: QemuUserOut | None = Field(
        None, description="Observed: who the running qemu is; null when it does not run"
    )
    restart_pending: bool = Field(
        False,
        description="The running qemu was started before a change it reads at start "
        "(vcpus, memory_mib, machine, accelerator, boot, run_as): stop and start to apply",
    )
    last_output: str | None = Field(None, description="The tail of qemu's output when it died")
    nics: list[NicOut]


class VmPage(BaseModel):
    items: list[Vm]
    next_cursor: str | None = None


class DeviceOut(BaseModel):
    """A guest NIC as qemu itself reports it (QOM), not as the database says."""

    id: str = Field(examples=["nic0"])
    type: str = Field(examples=["ne2k_isa"])
    mac: str | None = None
    link_up: bool | None = None
    mtu: int | None = Field(
        default=None, description="The MTU qemu advertises to the guest (virtio's host_mtu)"
    )
    vhost: bool | None = Field(
        default=None,
        description="virtio: whether the NIC's data path runs in the kernel's vhost-net, as "
        "qemu reports it (QMP x-query-virtio-status `vhost-started`), not as asked; null "
        "until the guest's driver has started the device (qemu starts vhost only then) and "
        "for other models",
    )
    guest_features: list[str] | None = Field(
        default=None,
        description="virtio: the feature bits the guest's driver accepted (names as in the "
        "virtio 1.2 spec, 5.1.3, e.g. VIRTIO_NET_F_MQ, VIRTIO_NET_F_CSUM), as qemu reports "
        "them; [] until the driver has negotiated; null for other models",
        examples=[["VIRTIO_NET_F_CSUM", "VIRTIO_NET_F_GUEST_CSUM", "VIRTIO_NET_F_MQ"]],
    )
    offloads: NegotiatedOffloads | None = Field(
        default=None,
        description="virtio: the offloads the guest negotiated (from guest_features); null "
        "until the driver has started the device and for other models",
    )
    host: str | None = Field(
        default=None,
        description="vfio-pci (an SR-IOV NIC): the host PCI device qemu passes through (its "
        "`host` property); its MAC is the VF's, not a qemu property (null)",
        examples=["0000:01:10.0"],
    )


class LinkState(RequestModel):
    up: bool


class NicPatch(
    UpdateModel,
    created_by=NicIn,
    shown_by=NicOut,
    instead="only ingress_kbps, egress_kbps and burst_kib change on a NIC (for the rest, "
    "remove the NIC and add it again: DELETE and POST /v1/vms/{id}/nics)",
):
    """Change a VM NIC's rate limits, at once on a running VM (tc on its tap: no restart).
    Omitted fields keep their value; null: no limit (burst_kib: the default). The result
    is checked as a whole (a burst needs a rate: remove both rates and the burst together).
    Only the bridge backend's NICs have limits (422 otherwise). Other fields of the NIC (as
    NicIn takes them or NicOut shows them: a NIC read back and sent again) are no change when
    they have the NIC's value (`vhost` null: auto; the observed port_security_state,
    observed_ipv4 and address_status_reason are not compared), 422 otherwise."""

    ingress_kbps: int | None = Field(
        None, ge=RATE_KBPS[0], le=RATE_KBPS[1], description=INGRESS_KBPS, examples=[10000]
    )
    egress_kbps: int | None = Field(
        None, ge=RATE_KBPS[0], le=RATE_KBPS[1], description=EGRESS_KBPS, examples=[10000]
    )
    burst_kib: int | None = Field(None, ge=BURST_RANGE[0], le=BURST_RANGE[1], description=BURST_KIB)
