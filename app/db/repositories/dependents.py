"""In-use protection: the rows that depend on a bridge, tap, network or VM."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import ColumnElement, delete, select
from sqlalchemy.orm import Session

from app.db.models import HostPort, Tap, Vm, VmNic
from app.db.models import PortForward as PortForwardRow
from app.domain.nics import backends_with, peer_nics


class DependentsRepository:
    """The rows that keep a bridge, tap, network or VM from being deleted (see
    app.domain.dependents for the graph). NICs of VMs on their way out do not count: they go
    with their VM."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def _live_nics(self, *where: ColumnElement[bool]) -> list[tuple[VmNic, Vm]]:
        query = (
            select(VmNic, Vm)
            .join(Vm, Vm.id == VmNic.vm_id)
            .where(Vm.deleted.is_(False), *where)
            .order_by(Vm.name, VmNic.position)
        )
        return [(nic, vm) for nic, vm in self.session.execute(query)]

    def nics_on_bridge(self, bridge_id: str) -> list[tuple[VmNic, Vm]]:
        return self._live_nics(VmNic.bridge_id == bridge_id)

    def nics_on_tap(self, tap_id: str) -> list[tuple[VmNic, Vm]]:
        return self._live_nics(VmNic.tap_id == tap_id)

    def nics_on_network(self, network_id: str) -> list[tuple[VmNic, Vm]]:
        return self._live_nics(VmNic.network_id == network_id)

    def peer_nics(self, vm_id: str, nic_id: str | None = None) -> list[tuple[VmNic, Vm]]:
        """NICs of other live VMs that need an endpoint one of this VM's NICs (or its NIC
        `nic_id`) offers (a socket NIC connecting to this VM's listening one): their backends'
        drivers decide from the stored options (app.domain.nics.peer_nics)."""
        nics = self._live_nics(VmNic.backend.in_(backends_with("has_peers")))
        own = [
            (nic.backend, nic.options)
            for nic, _ in nics
            if nic.vm_id == vm_id and nic_id in (None, nic.id)
        ]
        others = [((nic, vm), nic.backend, nic.options) for nic, vm in nics if nic.vm_id != vm_id]
        return peer_nics(own, others)

    def forwards_to_vm(self, vm_id: str) -> Sequence[PortForwardRow]:
        query = (
            select(PortForwardRow)
            .join(VmNic, VmNic.id == PortForwardRow.vm_nic_id)
            .where(VmNic.vm_id == vm_id, PortForwardRow.deleted.is_(False))
            .order_by(PortForwardRow.name)
        )
        return self.session.scalars(query).all()

    def forwards_to_nic(self, nic_id: str) -> Sequence[PortForwardRow]:
        query = select(PortForwardRow).where(PortForwardRow.vm_nic_id == nic_id)
        return self.session.scalars(query).all()

    def forwards_on_network(self, network_id: str) -> Sequence[PortForwardRow]:
        query = (
            select(PortForwardRow)
            .where(PortForwardRow.network_id == network_id, PortForwardRow.deleted.is_(False))
            .order_by(PortForwardRow.name)
        )
        return self.session.scalars(query).all()

    def taps_on_bridge(self, bridge_id: str) -> Sequence[Tap]:
        query = select(Tap).where(Tap.bridge_id == bridge_id, Tap.deleted.is_(False))
        return self.session.scalars(query.order_by(Tap.name)).all()

    def remove_nic(self, nic: VmNic) -> None:
        """A NIC leaves its VM: its forwards and host port claims go with it, and the VM's
        other NICs are renumbered to stay 0..n-1 (qemu's device ids follow that order)."""
        forward_ids = [f.id for f in self.forwards_to_nic(nic.id)]
        owners = [nic.id, *forward_ids]
        self.session.execute(delete(HostPort).where(HostPort.owner_id.in_(owners)))
        if forward_ids:
            self.session.execute(delete(PortForwardRow).where(PortForwardRow.id.in_(forward_ids)))
        vm_id = nic.vm_id
        self.session.delete(nic)
        self.session.flush()
        remaining = self.session.scalars(
            select(VmNic).where(VmNic.vm_id == vm_id).order_by(VmNic.position)
        ).all()
        for position, other in enumerate(remaining):
            other.position = position
