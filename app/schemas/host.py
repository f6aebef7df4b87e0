"""Host views: interfaces (ifconfig), routes (route -n), capabilities, diagnostics, events."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class Counters(BaseModel):
    rx_packets: int
    rx_bytes: int
    rx_errors: int
    rx_dropped: int
    tx_packets: int
    tx_bytes: int
    tx_errors: int
    tx_dropped: int


class ManagedBy(BaseModel):
    resource: str
    id: str


class HostInterface(BaseModel):
    name: str
    ifindex: int
    kind: str | None
    admin_up: bool
    oper_state: str
    carrier: bool
    mtu: int | None
    mac: str | None
    master: str | None
    addresses: list[str]
    counters: Counters
    managed_by: ManagedBy | None = Field(None, description="Set when kvmnetd owns the link")


class HostRoute(BaseModel):
    family: str
    destination: str
    gateway: str | None
    device: str | None
    metric: int
    protocol: str
    scope: str
    table: int
    source: str | None


class Feature(BaseModel):
    available: bool
    reason: str | None = None
    kernel_config: str | None = Field(
        None,
        description="vlan_8021q, vlan_filtering, vhost_net: the kernel option that provides "
        "it (e.g. CONFIG_VLAN_8021Q, CONFIG_VHOST_NET)",
    )
    module: str | None = Field(
        None,
        description="vlan_8021q, vhost_net: the kernel module that provides it (8021q, "
        "vhost_net; the vhost_net probe loads it with modprobe where /dev/vhost-net is missing)",
    )


class NicModel(BaseModel):
    model: str
    bus: str
    alias: str | None = None
    description: str | None = None


class QemuInfo(BaseModel):
    available: bool
    binary: str | None = None
    version: str | None = None
    nic_models: list[NicModel]
    reason: str | None = None


class AcceleratorProbe(BaseModel):
    accelerator: str
    available: bool
    runs_guests: bool | None = Field(
        description="A real guest kernel booted under it (null: no kernel to try with)"
    )
    reason: str | None = None
    firmware_probe: dict[str, Any] | None = None
    guest_probe: dict[str, Any] | None = None


class Nftables(Feature):
    version: str | None = None


class RateLimitProbe(BaseModel):
    """How this host limits a VM NIC's traffic (its ingress_kbps and egress_kbps), tried on a
    probe tap: towards the guest always a tbf qdisc on the tap; from the guest a police
    action on the tap's ingress (act_police), else a redirect (act_mirred) to an ifb device
    shaped by a tbf."""

    available: bool
    method: Literal["police", "ifb"] | None = Field(
        None, description="How traffic from the guest is limited; null: it cannot be"
    )
    reason: str | None = Field(
        None, description="Why not police (the kernel's answer), or why nothing works"
    )


class Capabilities(BaseModel):
    rate_limit: RateLimitProbe = Field(
        default_factory=lambda: RateLimitProbe(available=False, method=None, reason="not probed"),
        description="NIC rate limits (tc): whether and how this host applies them",
    )
    links: dict[str, Feature] = Field(
        description="bridge, tuntap, veth, vlan_8021q, vlan_filtering, macvtap, vxlan, "
        "port_isolation (the bridge port flag `isolated`, set and read back on a probe tap)"
    )
    tun_device: Feature
    vhost_net: Feature
    nftables: Nftables
    qemu: QemuInfo
    accelerators: dict[str, AcceleratorProbe]
    probe_seconds: float


class CapabilitiesSummary(BaseModel):
    """What this host offers a tenant, without the provider's details (kernel options,
    modules, binaries, probe output: GET /v1/host/capabilities, admins only)."""

    features: dict[str, bool] = Field(
        description="Feature -> available: the link kinds and bridge features of "
        "/v1/host/capabilities' `links` (vlan_8021q, vlan_filtering, port_isolation, "
        "macvtap, ...), `tun_device` and `vhost_net`",
        examples=[{"vlan_8021q": False, "port_isolation": True, "vhost_net": False}],
    )
    accelerators: list[str] = Field(
        description="The accelerators that run guests here (e.g. tcg)", examples=[["tcg"]]
    )
    nic_models: list[str] = Field(description="The guest NIC models this host's qemu offers")


class Health(BaseModel):
    status: str = Field(examples=["ok"])
    detail: str | None = None


class DiagnosticCheck(BaseModel):
    """One diagnostic: `ok`, how bad it is when not, the reason, and the facts behind it."""

    name: str = Field(examples=["forward_policy"])
    ok: bool
    severity: Literal["error", "warning", "info"]
    detail: str
    data: dict[str, Any] = Field(default_factory=dict)
