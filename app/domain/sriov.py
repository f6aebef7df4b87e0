"""SR-IOV as the domain sees it: a host's physical functions (PFs), their virtual functions
(VFs), and the rules for handing a VF to a VM NIC. Pure data (stdlib only); app/host/sriov.py
reads and changes the kernel, the NIC backend is app/domain/nics/sriov.py.

Terms are the kernel's (Documentation/PCI/pci-iov-howto.rst, ip-link(8) `vf`): a PF's
`sriov_totalvfs` is how many VFs its device can have, `sriov_numvfs` how many exist now; each
VF has an index on its PF (`virtfnN`), a PCI address, and what the PF's driver sets for it
through netlink (IFLA_VF_MAC, IFLA_VF_VLAN, IFLA_VF_SPOOFCHK, IFLA_VF_TRUST).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NoReturn

from app.domain.errors import Conflict, InvalidInput
from app.domain.vlans import HostLacksFeature

# the capability probe's key (app.host.capabilities.probe_sriov)
SRIOV = "sriov"

# a PCI address as sysfs names it: domain:bus:device.function
PCI_ADDRESS = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$")
NUM_VFS = (0, 256)  # the PCI SR-IOV capability's TotalVFs is 16 bits; no PF we know goes beyond
VLAN_RANGE = (1, 4094)
VFIO_DRIVER = "vfio-pci"
# what a VF is given back when it returns to the pool: no MAC set by the PF (the VF driver
# chooses its own), no VLAN, spoof checking on and no trust (igb's defaults)
FREE_MAC = "00:00:00:00:00:00"


@dataclass(frozen=True)
class VfConfig:
    """What the PF's driver sets for one VF (ip-link(8) `vf N mac .. vlan .. spoofchk ..
    trust ..`). vlan 0: none."""

    mac: str = FREE_MAC
    vlan: int = 0
    spoof_check: bool = True
    trust: bool = False


FREE_CONFIG = VfConfig()


@dataclass(frozen=True)
class VirtualFunction:
    """One VF as sysfs and the PF's netlink report it."""

    index: int  # N of the PF's virtfnN
    pci_address: str
    driver: str | None  # the driver bound now (igbvf, vfio-pci, none)
    netdev: str | None  # its network interface when a network driver holds it
    iommu_group: int | None  # None: no IOMMU (vfio-pci cannot take it)
    config: VfConfig | None  # None: the PF reported nothing for it


@dataclass(frozen=True)
class PhysicalFunction:
    """A network interface whose PCI device can have VFs."""

    name: str
    pci_address: str
    driver: str | None
    total_vfs: int
    num_vfs: int
    vfs: tuple[VirtualFunction, ...]


def validate_pci_address(value: str) -> str:
    if not PCI_ADDRESS.match(value):
        raise InvalidInput(f"{value!r} is not a PCI address (dddd:bb:dd.f, lower-case hex)")
    return value


def validate_num_vfs(pf: PhysicalFunction, wanted: int, in_use: set[int]) -> None:
    """InvalidInput when `wanted` is beyond the device; Conflict when the count would change
    while NICs hold VFs of the PF (`in_use`: their indexes). Any change removes every VF (a
    non-zero count changes only through 0), and a VF vfio-pci holds for a running qemu would
    block the removal."""
    if isinstance(wanted, bool) or not 0 <= wanted <= pf.total_vfs:
        raise InvalidInput(
            f"num_vfs of {pf.name} must be between 0 and {pf.total_vfs} (sriov_totalvfs), "
            f"not {wanted}"
        )
    if in_use and wanted != pf.num_vfs:
        held = ", ".join(map(str, sorted(in_use)))
        raise Conflict(
            f"{pf.name}: VF(s) {held} are held by VM NICs; changing num_vfs removes every VF "
            "(the kernel changes a count only through 0): delete those NICs or VMs first"
        )


def free_vf(
    pfs: list[PhysicalFunction], claimed: set[str], pf_name: str | None
) -> tuple[PhysicalFunction, VirtualFunction]:
    """The first VF nobody claimed (`claimed`: PCI addresses) on `pf_name` (None: any PF),
    which vfio-pci can take (it is in an IOMMU group). Conflict naming why there is none."""
    candidates = [pf for pf in pfs if pf_name is None or pf.name == pf_name]
    if pf_name is not None and not candidates:
        _lacks_sriov(f"{pf_name} is not an SR-IOV physical function on this host")
    if not candidates:
        _lacks_sriov("this host has no SR-IOV physical function")
    for pf in candidates:
        for vf in pf.vfs:
            if vf.pci_address not in claimed and vf.iommu_group is not None:
                return pf, vf
    where = pf_name or "any physical function"
    vfs = [vf for pf in candidates for vf in pf.vfs]
    if vfs and all(vf.iommu_group is None for vf in vfs):
        _lacks_sriov(f"the VFs of {where} are in no IOMMU group: vfio-pci needs an IOMMU")
    raise Conflict(f"{where} has no free virtual function (set num_vfs to make more)")


def _lacks_sriov(reason: str) -> NoReturn:
    """409 host-lacks-feature with `missing_features` (as vhost-net's and a VLAN's): the host
    cannot give an sriov NIC a VF at all (a full pool is a plain conflict: it frees up)."""
    raise HostLacksFeature(
        f"{reason}; the sriov backend needs an SR-IOV NIC (GET /v1/host/sriov) and an IOMMU",
        missing_features=[
            {
                "feature": SRIOV,
                "description": "SR-IOV virtual functions (PCI SR-IOV capability, vfio-pci)",
                "kernel_config": None,
                "module": None,
                "reason": reason,
            }
        ],
    )
