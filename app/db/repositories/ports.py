"""Port resources (app.db.models.Port): lookups, filtered keyset pages, and what the link
supervisor, the network worker and the address allocator read of them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from app.db.models import Port, Tap, Vm, VmNic
from app.db.repositories.base import ResourceRepository
from app.domain.cursors import decode_cursor, encode_cursor
from app.domain.tenancy import Scope


class PortRepository(ResourceRepository[Port]):
    def __init__(self, session: Session) -> None:
        super().__init__(session, Port)

    def macs(self) -> set[str]:
        """The MAC of every port, deleted ones' too (until their rows go)."""
        return set(self.session.scalars(select(Port.mac_address)))

    def of_tap(self, tap_id: str) -> Port | None:
        """The port whose tap this taps row is (None: a tap resource of its own)."""
        return self.session.scalars(select(Port).where(Port.tap_id == tap_id)).first()

    def of_taps(self, tap_ids: Iterable[str]) -> dict[str, Port]:
        """Tap id -> its port, for the taps among `tap_ids` that are ports' taps."""
        query = select(Port).where(Port.tap_id.in_(list(tap_ids)))
        return {port.tap_id: port for port in self.session.scalars(query)}

    def taps(self, ports: Sequence[Port]) -> dict[str, Tap]:
        """Tap id -> taps row of these ports (one query)."""
        query = select(Tap).where(Tap.id.in_([p.tap_id for p in ports]))
        return {tap.id: tap for tap in self.session.scalars(query)}

    def user(self, port: Port) -> tuple[VmNic, Vm] | None:
        """The VM NIC that plugs the port (its tap), with its VM; None while unplugged."""
        query = select(VmNic, Vm).join(Vm, Vm.id == VmNic.vm_id).where(VmNic.tap_id == port.tap_id)
        row = self.session.execute(query).first()
        return None if row is None else (row[0], row[1])

    def users(self, ports: Sequence[Port]) -> dict[str, tuple[VmNic, Vm]]:
        """Tap id -> the VM NIC (and VM) that plugs it, for these ports (one query)."""
        query = (
            select(VmNic, Vm)
            .join(Vm, Vm.id == VmNic.vm_id)
            .where(VmNic.tap_id.in_([p.tap_id for p in ports]))
        )
        found: dict[str, tuple[VmNic, Vm]] = {}
        for nic, vm in self.session.execute(query):
            found[nic.tap_id or ""] = (nic, vm)
        return found

    def plugged_into(self, nic_tap_ids: Iterable[str]) -> Sequence[Port]:
        """The ports whose taps these (NICs') tap ids are."""
        wanted = [t for t in nic_tap_ids if t]
        if not wanted:
            return []
        return self.session.scalars(select(Port).where(Port.tap_id.in_(wanted))).all()

    def live(self, scope: Scope) -> Sequence[Port]:
        """The ports not being deleted that the scope sees, in creation order (the Neutron
        view lists them all and filters in memory)."""
        query = select(Port).where(Port.deleted.is_(False))
        if scope.project_id is not None:
            query = query.where(Port.project_id == scope.project_id)
        return self.session.scalars(query.order_by(Port.created_at, Port.id)).all()

    def on_network(self, network_id: str) -> Sequence[Port]:
        """The live ports with a fixed address on a managed network, oldest first."""
        query = (
            select(Port)
            .where(Port.network_id == network_id, Port.ipv4.is_not(None), Port.deleted.is_(False))
            .order_by(Port.created_at, Port.id)
        )
        return self.session.scalars(query).all()

    def filtered_page(
        self,
        limit: int,
        cursor: str | None,
        scope: Scope,
        segments: tuple[str | None, str | None] | None = None,
        device_id: str | None = None,
    ) -> tuple[Sequence[Port], str | None]:
        """A page of the ports the scope sees, in creation order; `segments`: only those
        on this (bridge id, VLAN id) (one of them None); `device_id`: only those plugged
        by it ("" : the unplugged ones)."""
        query = select(Port).order_by(Port.created_at, Port.id).limit(limit + 1)
        if scope.project_id is not None:
            query = query.where(Port.project_id == scope.project_id)
        if segments is not None:
            bridge_id, vlan_id = segments
            if vlan_id is not None:
                query = query.where(Port.vlan_id == vlan_id)
            else:
                query = query.where(Port.bridge_id == bridge_id)
        if device_id is not None:
            query = query.where(Port.device_id == device_id)
        if cursor is not None:
            created, row_id = decode_cursor(cursor)
            query = query.where(tuple_(Port.created_at, Port.id) > tuple_(created, row_id))
        rows = self.session.scalars(query).all()
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if more else None
        return rows, next_cursor


def mirror_tap(session: Session, tap: Tap, gone: bool) -> tuple[Port, bool] | None:
    """Bring a port's lifecycle in line with its tap's, as the link pass just recorded it
    (`gone`: the tap and its row are going now). Returns (the port, whether it settled at
    its current generation), or None when the tap is no port's. A port changes nothing
    else on the host, so it has settled once its tap has; a port whose tap is gone goes
    with it (its row first: the foreign key)."""
    port = session.scalars(select(Port).where(Port.tap_id == tap.id)).first()
    if port is None:
        return None
    if gone:
        session.delete(port)
        session.flush()  # before the tap row's delete
        port.observed_generation = port.generation
        return port, True
    settled = tap.observed_generation == tap.generation and tap.status != "pending"
    port.status = "deleting" if port.deleted else tap.status
    port.status_reason = tap.status_reason
    if settled:
        port.observed_generation = port.generation
    return port, settled
