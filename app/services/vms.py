"""VM use cases (issue 3; the API and the supervisor's VM worker are not wired yet).

Creating a VM validates it against the rules and what this host offers, allocates what the
daemon owns (unique MACs, tap names for bridge NICs, loopback ports for socket NICs), claims
host ports for port forwards (clashes are refused), and writes the VM, its NICs and an
operation in the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import HostPort, LinkName, Operation, Tap, Vm, VmNic, new_id
from app.db.repositories import (
    BridgeRepository,
    OperationRepository,
    TapRepository,
    VmRepository,
)
from app.domain.errors import BeingDeleted, Conflict, InUse, InvalidInput, NameTaken, NotFound
from app.domain.networks import PortSpan
from app.domain.vms import (
    Backend,
    BootSpec,
    NicSpec,
    PortForward,
    PowerState,
    SocketNet,
    UserNet,
    VmSpec,
    VmStatus,
    allocate_mac,
    resolve_accelerator,
    validate_vm,
)
from app.schemas.vms import NicIn, VmCreate
from app.services.in_use import InUseGuard
from app.services.links import require_alive
from app.services.networks import PortClaims, fixed_address
from app.services.ports import LeaseReader

SOCKET_PORTS = range(40000, 50000)
WILDCARD = "0.0.0.0"  # loopback ports handed to socket NICs that listen


@dataclass(frozen=True)
class HostFacts:
    """What the probed host offers (from the capability probe)."""

    nic_models: frozenset[str]
    vhost_net: bool
    kvm_runs_guests: bool | None

    @classmethod
    def from_capabilities(cls, capabilities: dict[str, Any]) -> HostFacts:
        """From the capability probe's answer (GET /v1/host/capabilities)."""
        kvm = capabilities.get("accelerators", {}).get("kvm", {})
        return cls(
            nic_models=frozenset(m["model"] for m in capabilities["qemu"]["nic_models"]),
            vhost_net=bool(capabilities["vhost_net"]["available"]),
            kvm_runs_guests=kvm.get("runs_guests") if kvm.get("available") else False,
        )


def vm_tap_name(vm_id: str, index: int) -> str:
    """`kv<8 hex of the VM id>-<index>`: 13-14 characters, unique per VM and NIC."""
    return f"kv{vm_id.replace('-', '')[:8]}-{index}"


class VmService:
    def __init__(self, session: Session, request_id: str | None = None) -> None:
        self.session = session
        self.request_id = request_id

    # ---- lookups ---------------------------------------------------------------------------

    def get(self, ref: str) -> Vm:
        row = VmRepository(self.session).find(ref)
        if row is None:
            raise NotFound(f"no VM {ref!r}")
        return row

    def nics(self, vm_id: str) -> list[VmNic]:
        return list(VmRepository(self.session).nics(vm_id))

    def page(self, limit: int, cursor: str | None) -> tuple[Sequence[Vm], str | None]:
        return VmRepository(self.session).page(limit, cursor)

    def record_link(self, nic_id: str, up: bool) -> None:
        """The link state a NIC was last given at run time (applied by QMP set_link)."""
        nic = self.session.get(VmNic, nic_id)
        if nic is not None:
            nic.link_up = up

    # ---- create ----------------------------------------------------------------------------

    def create(
        self, body: VmCreate, host: HostFacts, leases: LeaseReader | None = None
    ) -> tuple[Vm, list[VmNic], Operation]:
        """`leases` reads a managed network's DHCP leases (a fixed address leased to another
        MAC is refused)."""
        if self.session.scalars(select(Vm.id).where(Vm.name == body.name)).first():
            raise NameTaken(f"a VM named {body.name!r} exists")
        vm_id = new_id()
        taken_macs = set(self.session.scalars(select(VmNic.mac)))
        nics = [self._nic(vm_id, index, nic, taken_macs) for index, nic in enumerate(body.nics)]
        spec = VmSpec(
            id=vm_id,
            name=body.name,
            vcpus=body.vcpus,
            memory_mib=body.memory_mib,
            machine=body.machine,
            accelerator=body.accelerator,
            boot=BootSpec(**body.boot.model_dump()),
            nics=tuple(spec for _, spec in nics),
        )
        validate_vm(spec, host.nic_models, host.vhost_net)
        resolve_accelerator(body.accelerator, host.kvm_runs_guests)  # refuse kvm where it hangs
        row = Vm(
            id=vm_id,
            name=body.name,
            vcpus=body.vcpus,
            memory_mib=body.memory_mib,
            machine=body.machine.value,
            accelerator=body.accelerator.value,
            boot=body.boot.model_dump(),
            power_state=body.power_state.value,
            restart_policy=body.restart_policy.value,
            run_as_uid=body.run_as.uid if body.run_as else None,
            run_as_gid=body.run_as.gid if body.run_as else None,
            generation=1,
        )
        self.session.add(row)
        nic_rows = [nic_row for nic_row, _ in nics]
        self.session.add_all(nic_rows)
        for nic_row, nic_in in zip(nic_rows, body.nics, strict=True):
            if nic_row.bridge_id or nic_row.tap_id:
                fixed_address(
                    self.session,
                    nic_row,
                    nic_in.ipv4,
                    nic_row.bridge_id,
                    nic_row.tap_id,
                    leases,
                )
            elif nic_in.ipv4 is not None:
                raise InvalidInput("ipv4 is only for NICs on a managed network's bridge or tap")
        operation = Operation(
            action="create",
            resource="vm",
            resource_id=vm_id,
            target_generation=1,
            request_id=self.request_id,
        )
        OperationRepository(self.session).add(operation)
        return row, nic_rows, operation

    # ---- one NIC ---------------------------------------------------------------------------

    def _nic(
        self, vm_id: str, index: int, nic: NicIn, taken_macs: set[str]
    ) -> tuple[VmNic, NicSpec]:
        mac = nic.mac or allocate_mac(taken_macs)
        if mac in taken_macs:
            raise Conflict(f"MAC {mac} is already used by another NIC")
        taken_macs.add(mac)
        nic_id = new_id()
        row = VmNic(
            id=nic_id,
            vm_id=vm_id,
            position=index,
            model=nic.model,
            mac=mac,
            backend=nic.backend.value,
            queues=nic.queues,
            mtu=nic.mtu,
            vhost=nic.vhost.value,
            link_up=nic.link_up,
            options={},
        )
        spec = NicSpec(
            id=nic_id,
            model=nic.model,
            mac=mac,
            backend=nic.backend,
            queues=nic.queues,
            vhost=nic.vhost,
            link_up=nic.link_up,
            mtu=nic.mtu,
        )
        if nic.backend is Backend.BRIDGE:
            spec = self._bridge_nic(row, spec, nic, vm_id, index)
        elif nic.backend is Backend.TAP:
            spec = self._tap_nic(row, spec, nic)
        elif nic.backend is Backend.USER:
            spec = self._user_nic(row, spec, nic)
        elif nic.backend is Backend.SOCKET:
            spec = self._socket_nic(row, spec, nic)
        if nic.hub is not None:  # a hub NIC, or a backend that joins a hub
            row.options = {**row.options, "hub": nic.hub}
            spec = replace(spec, hub=nic.hub)
        return row, spec

    def _bridge_nic(self, row: VmNic, spec: NicSpec, nic: NicIn, vm_id: str, index: int) -> NicSpec:
        assert nic.bridge is not None
        bridge = require_alive(
            BridgeRepository(self.session).find(nic.bridge), "bridge", nic.bridge
        )
        tap_name = vm_tap_name(vm_id, index)
        if self.session.get(LinkName, tap_name) is not None:
            raise NameTaken(f"link name {tap_name} is taken")
        self.session.add(LinkName(name=tap_name, resource="vm", resource_id=vm_id))
        row.bridge_id, row.tap_name = bridge.id, tap_name
        return replace(spec, tap=tap_name)

    def _tap_nic(self, row: VmNic, spec: NicSpec, nic: NicIn) -> NicSpec:
        assert nic.tap is not None
        tap = require_alive(TapRepository(self.session).find(nic.tap), "tap", nic.tap)
        assert isinstance(tap, Tap)
        user = self.session.scalars(select(VmNic.vm_id).where(VmNic.tap_id == tap.id)).first()
        if user is not None:
            raise InUse(f"tap {tap.name!r} is already used by VM {user}")
        if tap.multi_queue != (nic.queues > 1):
            raise InvalidInput(
                f"tap {tap.name!r} was created with multi_queue={tap.multi_queue}; a NIC with "
                f"{nic.queues} queue(s) needs multi_queue={nic.queues > 1}"
            )
        row.tap_id, row.tap_name = tap.id, tap.name
        return replace(spec, tap=tap.name)

    def _user_nic(self, row: VmNic, spec: NicSpec, nic: NicIn) -> NicSpec:
        user_in = nic.user
        forwards = tuple(
            PortForward(f.protocol, f.host_port, f.guest_port, f.host_address, f.guest_address)
            for f in (user_in.forwards if user_in else [])
        )
        user = (
            UserNet(**user_in.model_dump(exclude={"forwards"}), forwards=forwards)
            if user_in
            else UserNet()
        )
        for forward in forwards:
            self._claim_port(forward.protocol, forward.host_address, forward.host_port, row.id)
        row.options = {"user": user_in.model_dump() if user_in else {}}
        return replace(spec, user=user)

    def _socket_nic(self, row: VmNic, spec: NicSpec, nic: NicIn) -> NicSpec:
        socket_in = nic.socket
        assert socket_in is not None
        if socket_in.mode == "mcast":
            if socket_in.group is None or socket_in.port is None:
                raise InvalidInput("a multicast socket NIC needs `group` and `port`")
            socket = SocketNet("mcast", socket_in.port, socket_in.group)
        elif socket_in.mode == "listen":
            port = socket_in.port or self._free_port(SOCKET_PORTS)
            self._claim_port("tcp", "127.0.0.1", port, row.id)
            socket = SocketNet("listen", port)
        else:
            socket = SocketNet("connect", self._peer_port(socket_in.peer))
        row.options = {
            "socket": {
                "mode": socket.mode,
                "port": socket.port,
                "address": socket.address,
                "peer": socket_in.peer,
            }
        }
        return replace(spec, socket=socket)

    # ---- helpers ---------------------------------------------------------------------------

    def _claim_port(self, protocol: str, address: str, port: int, nic_id: str) -> None:
        """Claim a host port; 0.0.0.0 clashes with every address on that port."""
        PortClaims(self.session).claim(protocol, address, PortSpan(port, port), "vm_nic", nic_id)

    def _free_port(self, ports: Iterable[int]) -> int:
        used = set(
            self.session.scalars(
                select(HostPort.port).where(
                    HostPort.protocol == "tcp", HostPort.address == "127.0.0.1"
                )
            )
        )
        for port in ports:
            if port not in used:
                return port
        raise Conflict("no free loopback port left for socket NICs")

    def _peer_port(self, peer: str | None) -> int:
        """`<vm name or id>/<nic index>` of a socket NIC that listens."""
        if not peer or "/" not in peer:
            raise InvalidInput("a connecting socket NIC names its peer as `<vm>/<nic index>`")
        vm_ref, _, index_text = peer.rpartition("/")
        if not index_text.isdigit():
            raise InvalidInput(f"peer {peer!r}: the NIC index must be a number")
        vm = self.get(vm_ref)
        if vm.deleted:  # it would be left connecting to a port nobody listens on
            raise BeingDeleted(f"peer {peer!r}: VM {vm.name!r} is being deleted")
        target = next((n for n in self.nics(vm.id) if n.position == int(index_text)), None)
        options = (target.options or {}).get("socket", {}) if target else {}
        if target is None or options.get("mode") != "listen":
            raise InvalidInput(f"peer {peer!r} is not a listening socket NIC")
        return int(options["port"])


class VmPowerService:
    """Start, stop and delete: each is a new desired state, a generation and an operation."""

    def __init__(self, session: Session, request_id: str | None = None) -> None:
        self.session = session
        self.request_id = request_id
        self.vms = VmService(session, request_id)

    def set_power(
        self, ref: str, power: PowerState, kill: bool = False
    ) -> tuple[Vm, Operation | None]:
        """Start or stop; `kill` stops with SIGKILL at once instead of the shutdown ladder."""
        row = self.vms.get(ref)
        if row.deleted:
            raise BeingDeleted(f"VM {row.name!r} is being deleted")
        stop_mode = "kill" if kill else "graceful"
        unchanged = row.power_state == power.value and row.stop_mode == stop_mode
        if unchanged and row.status != VmStatus.ERROR.value:
            return row, None
        row.power_state, row.stop_mode = power.value, stop_mode
        return row, self._bump(row, "update", VmStatus.PENDING)

    def delete(self, ref: str, force: bool = False) -> tuple[Vm, Operation | None]:
        """Stop (gracefully, or with SIGKILL when forced), then remove everything. Refused
        (409 in-use) while port forwards target the VM or other VMs' socket NICs connect to
        it, unless forced: then those forwards are deleted and those NICs leave their VMs."""
        row = self.vms.get(ref)
        if row.deleted and not (force and row.stop_mode != "kill"):
            return row, None
        guard = InUseGuard(self.session, self.request_id)
        if not force:
            guard.refuse(f"VM {row.name!r}", guard.vm_dependents(row))
        guard.free_vm(row)
        row.deleted = True
        row.stop_mode = "kill" if force else row.stop_mode
        return row, guard.record(self._bump(row, "delete", VmStatus.DELETING))

    def _bump(self, row: Vm, action: str, status: VmStatus) -> Operation:
        row.generation += 1
        row.status = status.value
        row.status_reason = None
        operation = Operation(
            action=action,
            resource="vm",
            resource_id=row.id,
            target_generation=row.generation,
            request_id=self.request_id,
        )
        OperationRepository(self.session).add(operation)
        return operation
