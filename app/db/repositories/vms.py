"""VMs and their NICs, and the domain's VM spec built from their rows."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.db.models import HostPort, LinkName, VfClaim, Vm, VmNic
from app.db.repositories.base import ResourceRepository
from app.domain.nics import load_options
from app.domain.nics.offloads import Offloads
from app.domain.vms import Accelerator, BootSpec, Machine, NicSpec, Vhost, VmSpec


class VmRepository(ResourceRepository[Vm]):
    names_fold_case = True

    def __init__(self, session: Session) -> None:
        super().__init__(session, Vm)

    def nics(self, vm_id: str) -> Sequence[VmNic]:
        query = select(VmNic).where(VmNic.vm_id == vm_id).order_by(VmNic.position)
        return self.session.scalars(query).all()

    def nic(self, nic_id: str) -> VmNic | None:
        return self.session.get(VmNic, nic_id)

    def nic_by_ref(self, vm_id: str, nic_ref: str) -> VmNic | None:
        """A NIC of the VM by its id, or by its index (ASCII digits only: the index is the
        NIC's for life, app.services.vm_nics; str.isdigit alone takes "²" and "٣")."""
        index = int(nic_ref) if nic_ref.isascii() and nic_ref.isdigit() else None
        for nic in self.nics(vm_id):
            if nic.id == nic_ref or nic.position == index:
                return nic
        return None

    def all_nics(self) -> Sequence[VmNic]:
        return self.session.scalars(select(VmNic)).all()

    def nic_macs(self) -> set[str]:
        """The MAC of every VM NIC, deleted VMs' too."""
        return set(self.session.scalars(select(VmNic.mac)))

    def tap_user(self, tap_id: str) -> str | None:
        """The id of a VM with a NIC on this tap resource, if any."""
        query = select(VmNic.vm_id).where(VmNic.tap_id == tap_id)
        return self.session.scalars(query).first()

    def forget(self, vm_id: str) -> None:
        """Remove a VM's rows for good: its NICs' host port claims, its link names, its VF
        claims, its NICs, then the VM (the order its foreign keys need)."""
        nic_ids = list(self.session.scalars(select(VmNic.id).where(VmNic.vm_id == vm_id)))
        if nic_ids:
            self.session.execute(delete(HostPort).where(HostPort.owner_id.in_(nic_ids)))
        self.session.execute(delete(LinkName).where(LinkName.resource_id == vm_id))
        self.session.execute(delete(VfClaim).where(VfClaim.vm_id == vm_id))
        self.session.execute(delete(VmNic).where(VmNic.vm_id == vm_id))
        self.session.execute(delete(Vm).where(Vm.id == vm_id))


def vm_spec(vm: Vm, nics: Sequence[VmNic]) -> VmSpec:
    """A VM and its NICs as the domain's spec (what the qemu command line is built from)."""
    ordered = sorted(nics, key=lambda n: n.position)
    return VmSpec(
        id=vm.id,
        name=vm.name,
        vcpus=vm.vcpus,
        memory_mib=vm.memory_mib,
        machine=Machine(vm.machine),
        accelerator=Accelerator(vm.accelerator),
        boot=BootSpec(**vm.boot),
        nics=tuple(_nic_spec(nic) for nic in ordered),
        nic_indexes=tuple(nic.position for nic in ordered),
    )


def _nic_spec(nic: VmNic) -> NicSpec:
    """The NIC as the domain's spec; its backend's driver reads the stored `options`."""
    spec = NicSpec(
        id=nic.id,
        model=nic.model,
        mac=nic.mac,
        backend=nic.backend,
        tap=nic.tap_name,
        queues=nic.queues,
        vhost=Vhost(nic.vhost),
        link_up=nic.link_up,
        mtu=nic.mtu,
        offloads=Offloads(nic.offload_checksum, nic.offload_tso, nic.offload_gso),
    )
    return load_options(spec, nic.options)
