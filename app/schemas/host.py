"""Host views: interfaces (ifconfig), routes (route -n), capabilities, diagnostics, events."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from app.schemas.common import RequestModel


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
    vhost_net: Feature = Field(
        description="vhost-net for NICs' `vhost` (auto uses it where available; on is 409 "
        "host-lacks-feature where not): /dev/vhost-net opened by trying (kernel "
        "CONFIG_VHOST_NET, module vhost_net, which the probe loads with the kernel's modprobe "
        "where the device node is missing); `reason` says what failed"
    )
    sriov: Feature = Field(
        default_factory=lambda: Feature(
            available=False, reason="not probed", kernel_config=None, module=None
        ),
        description="SR-IOV virtual functions for the sriov NIC backend: a physical function "
        "in sysfs (sriov_totalvfs) and an IOMMU for vfio-pci; reason `no SR-IOV physical "
        "function` on a host without one (GET /v1/host/sriov lists them)",
    )
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
        "macvtap, ...), `tun_device`, `vhost_net`, `rate_limit` and `sriov` (SR-IOV virtual "
        "functions: a physical function and an IOMMU; the sriov backend is the admins')",
        examples=[
            {"vlan_8021q": False, "port_isolation": True, "vhost_net": False, "sriov": False}
        ],
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


class SriovVf(BaseModel):
    """One virtual function of a physical function (sysfs `virtfnN`), with what the PF's
    driver reports for it through netlink (IFLA_VFINFO_LIST; ip-link(8) `vf N ...`)."""

    index: int = Field(description="N of the PF's virtfnN (ip-link(8) `vf N`)")
    pci_address: str = Field(examples=["0000:01:10.0"])
    driver: str | None = Field(
        None,
        description="The driver bound now: its own (igbvf, iavf, ...), vfio-pci while a "
        "VM's qemu holds it, null: none",
    )
    netdev: str | None = Field(
        None, description="Its network interface, while its own driver holds it"
    )
    iommu_group: int | None = Field(
        None,
        description="Its IOMMU group (/dev/vfio/<group>); null: no IOMMU, so vfio-pci "
        "cannot take it (boot with intel_iommu=on or amd_iommu=on)",
    )
    mac: str | None = Field(None, description="The MAC the PF set for it; 00:00:00:00:00:00: none")
    vlan: int | None = Field(
        None,
        description="The VLAN (802.1Q VID, 1-4094) the PF's switch puts the VF's untagged "
        "frames on (ip-link(8) `vf N vlan VLANID`; netlink IFLA_VF_VLAN, where the kernel "
        "reports VLAN 0 for none). Null: none (as a NIC's `vf_vlan`), or the PF reported "
        "nothing for the VF (then `mac` is null too)",
    )
    spoof_check: bool | None = Field(
        None,
        description="Whether the PF drops frames from the VF whose source MAC is not the VF's "
        "(ip-link(8) `vf N spoofchk on|off`; netlink IFLA_VF_SPOOFCHK; a driver that cannot "
        "say reports -1, shown as false). Null: the PF reported nothing for the VF",
    )
    trust: bool | None = Field(
        None,
        description="Whether the VF is trusted: it may change its MAC and enter promiscuous or "
        "all-multicast mode (ip-link(8) `vf N trust on|off`; netlink IFLA_VF_TRUST; -1 from "
        "a driver that cannot say is shown as false). Null: the PF reported nothing for the VF",
    )
    vm_id: str | None = Field(None, description="The VM whose NIC holds it; null: free")
    nic_id: str | None = Field(None, description="The NIC that holds it; null: free")


class SriovPf(BaseModel):
    """An SR-IOV physical function: a host NIC whose PCI device can have virtual functions
    (Documentation/PCI/pci-iov-howto.rst)."""

    name: str = Field(description="Its network interface", examples=["enp1s0f0"])
    pci_address: str = Field(examples=["0000:01:00.0"])
    driver: str | None = Field(None, description="Its driver (igb, ixgbe, i40e, ice, mlx5_core)")
    total_vfs: int = Field(description="How many VFs the device can have (sriov_totalvfs)")
    num_vfs: int = Field(description="How many VFs it has now (sriov_numvfs)")
    free_vfs: int = Field(description="VFs no VM NIC holds")
    vfs: list[SriovVf]


class SriovNumVfs(RequestModel):
    """PUT /v1/host/sriov/{pf}: how many VFs the PF should have (an integral number: 2.0 is
    2, as JSON Schema counts it; "2" and true are 422)."""

    num_vfs: int = Field(
        ge=0,
        le=256,
        description="0 to the PF's total_vfs (sysfs sriov_numvfs). Changing a non-zero count "
        "removes every VF first (the kernel's rule: write 0, then the new count), so every "
        "VF is made anew with the settings of a free one; hence 409 while any VM NIC holds a "
        "VF of this PF (delete those NICs or VMs first). The same count: nothing changes",
    )
