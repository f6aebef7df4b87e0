"""The protected NICs (port_security on) the network worker loads rules for, and the outcome
it records on each (`port_security_reason`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import select

from app.db.models import Port, Vm, VmNic
from app.db.session import Session


@dataclass(frozen=True)
class ProtectedNic:
    """One protected NIC as loaded at the start of a pass."""

    nic_id: str
    vm: str
    position: int
    tap: str
    mac: str
    ipv4: str | None  # its fixed address on a managed network
    observed_ipv4: str | None  # the address its DHCP lease shows
    allowed: tuple[str, ...]
    reason: str | None  # as recorded


def protected_nics(session: Session) -> list[ProtectedNic]:
    """NICs with port_security on and a tap. A VM being deleted keeps its rules until its
    rows go (its qemu may still send while it stops); the rules of a tap that is gone are
    harmless and removed at the next pass that sees the NIC gone."""
    query = (
        select(VmNic, Vm.name, Port.ipv4)
        .join(Vm, Vm.id == VmNic.vm_id)
        # a NIC that plugs a port (its tap) has the port's fixed address
        .outerjoin(Port, Port.tap_id == VmNic.tap_id)
        .where(VmNic.port_security.is_(True), VmNic.tap_name.is_not(None))
        .order_by(VmNic.tap_name)
    )
    found = []
    for nic, vm, port_ipv4 in session.execute(query):
        allowed = nic.allowed_addresses if isinstance(nic.allowed_addresses, list) else []
        found.append(
            ProtectedNic(
                nic_id=nic.id,
                vm=vm,
                position=nic.position,
                tap=str(nic.tap_name),
                mac=nic.mac,
                ipv4=nic.ipv4 or port_ipv4,
                observed_ipv4=nic.observed_ipv4,
                allowed=tuple(str(a) for a in allowed),
                reason=nic.port_security_reason,
            )
        )
    return found


def record_port_security(session: Session, reasons: Mapping[str, str | None]) -> None:
    """Why each NIC's rules are not loaded (None: they are)."""
    for nic_id, reason in reasons.items():
        nic = session.get(VmNic, nic_id)
        if nic is not None:
            nic.port_security_reason = reason
