"""The host's SR-IOV pool as the API shows it (GET /v1/host/sriov): the physical functions
and virtual functions sysfs and netlink report (read by the host inspector), joined with the
VF claims of VM NICs (which NIC holds each VF); and the check before a PF's VF count changes
(PUT /v1/host/sriov/{pf}). The pool is the host's, claims are the database's: a VF is free
when no NIC claims it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.db.repositories import VfClaimRepository
from app.db.session import Session
from app.domain.errors import NotFound
from app.domain.sriov import PhysicalFunction, validate_num_vfs


class SriovService:
    def __init__(self, session: Session) -> None:
        self.session = session

    def view(self, pfs: Sequence[PhysicalFunction]) -> list[dict[str, Any]]:
        """Each PF with its VFs, their settings and who holds them."""
        claimed = VfClaimRepository(self.session).claimed()
        shown = []
        for pf in pfs:
            vfs = []
            for vf in pf.vfs:
                claim = claimed.get(vf.pci_address)
                config = vf.config
                vfs.append(
                    {
                        "index": vf.index,
                        "pci_address": vf.pci_address,
                        "driver": vf.driver,
                        "netdev": vf.netdev,
                        "iommu_group": vf.iommu_group,
                        "mac": config.mac if config else None,
                        # the kernel's VLAN 0 is none: null, as a NIC's vf_vlan
                        "vlan": (config.vlan or None) if config else None,
                        "spoof_check": config.spoof_check if config else None,
                        "trust": config.trust if config else None,
                        "vm_id": claim.vm_id if claim else None,
                        "nic_id": claim.nic_id if claim else None,
                    }
                )
            shown.append(
                {
                    "name": pf.name,
                    "pci_address": pf.pci_address,
                    "driver": pf.driver,
                    "total_vfs": pf.total_vfs,
                    "num_vfs": pf.num_vfs,
                    "free_vfs": sum(1 for vf in vfs if vf["nic_id"] is None),
                    "vfs": vfs,
                }
            )
        return shown

    def check_num_vfs(self, pfs: Sequence[PhysicalFunction], name: str, wanted: int) -> None:
        """404 for an unknown PF, 422 beyond its total_vfs, 409 while NICs hold its VFs."""
        pf = next((p for p in pfs if p.name == name), None)
        if pf is None:
            raise NotFound(f"{name} is not an SR-IOV physical function on this host")
        in_use = {
            c.vf_index for c in VfClaimRepository(self.session).claimed().values() if c.pf == name
        }
        validate_num_vfs(pf, wanted, in_use)
