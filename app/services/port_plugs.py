"""Plugging ports into VM NICs (the `port` NIC backend, app.domain.nics.port) and
unplugging them when the VM or its NIC goes: a port's device_id and device_owner say who
plugs it (Nova's compute:<zone> becomes `compute:kvmnetd`). Apart from the port service
(app.services.network_ports) so that the VM and in-use services may use it."""

from __future__ import annotations

from collections.abc import Iterable

from app.db.models import Port, VmNic
from app.db.repositories import PortRepository, VmRepository
from app.db.session import Session
from app.domain.errors import BeingDeleted, InUse, InvalidInput, NotFound
from app.domain.ports import DEVICE_OWNER
from app.domain.status import Status
from app.domain.tenancy import Scope
from app.schemas.vms import NicIn


def settle_at_once(port: Port) -> None:
    """A change that needs nothing of the kernel: a new generation, settled already when
    the port was (its tap has not changed)."""
    was_settled = port.observed_generation == port.generation
    port.generation += 1
    if was_settled and port.status != Status.PENDING.value:
        port.observed_generation = port.generation


def find_port(session: Session, ref: str, scope: Scope) -> Port:
    port = PortRepository(session).find(ref, scope)
    if port is None:
        raise NotFound(f"no port {ref!r}")
    return port


def plug(session: Session, ref: str, scope: Scope, vm_id: str, mac: str | None) -> Port:
    """The port `ref` plugged by VM `vm_id`'s new NIC: 404 unknown, 409 being deleted or in
    use by another VM (PortInUse), 422 for a NIC MAC other than the port's."""
    port = find_port(session, ref, scope)
    if port.deleted:
        raise BeingDeleted(f"port {port.name!r} is being deleted")
    user = PortRepository(session).user(port)
    if user is not None:
        _, vm = user
        which = f"VM {vm.name!r} ({vm.id})" if scope.sees(vm.project_id) else "another VM"
        raise InUse(f"port {port.name!r} is in use by {which} (PortInUse)")
    if port.device_id and port.device_owner == DEVICE_OWNER and port.device_id != vm_id:
        raise InUse(f"port {port.name!r} is in use by VM {port.device_id} (PortInUse)")
    if mac is not None and mac != port.mac_address:
        raise InvalidInput(
            f"the NIC's mac {mac} is not port {port.name!r}'s ({port.mac_address}): a NIC on a "
            "port has the port's MAC (leave `mac` out)"
        )
    port.device_id, port.device_owner = vm_id, DEVICE_OWNER
    settle_at_once(port)
    return port


def plugged_port_settings(session: Session, nic: VmNic, asked: NicIn) -> None:
    """A NIC on a port takes the port's fixed address and port security: asking for others
    on the NIC is 422 (set them on the port)."""
    port = PortRepository(session).of_tap(nic.tap_id or "")
    assert port is not None  # plug() found it
    if asked.ipv4 is not None and asked.ipv4 != port.ipv4:
        raise InvalidInput(
            f"a NIC on port {port.name!r} has the port's fixed address ({port.ipv4 or 'none'})"
        )
    if asked.port_security is not None and asked.port_security != port.port_security:
        raise InvalidInput(f"port_security of a NIC on port {port.name!r} is the port's")
    if asked.allowed_addresses is not None:
        raise InvalidInput(f"allowed_addresses of a NIC on port {port.name!r} are the port's")
    nic.port_security = port.port_security
    nic.allowed_addresses = list(port.allowed_addresses or [])


def _unplug(ports: Iterable[Port], vm_id: str | None = None) -> None:
    for port in ports:
        if vm_id is None or port.device_id == vm_id:
            port.device_id, port.device_owner = "", ""
            settle_at_once(port)


def unplug_vm(session: Session, vm_id: str) -> None:
    """A VM is going: the ports its NICs plug lose device_id and device_owner."""
    nics = VmRepository(session).nics(vm_id)
    _unplug(PortRepository(session).plugged_into(n.tap_id or "" for n in nics), vm_id)


def unplug_taps(session: Session, tap_ids: Iterable[str | None]) -> None:
    """NICs on these taps left their VMs: their ports are free again."""
    _unplug(PortRepository(session).plugged_into(t or "" for t in tap_ids))
