"""A VM's NICs after its creation: add one, remove one (issue 13 item 6).

Both validate as a create does (the same path: VmService.new_nic and nic_settings, then the
whole VM through validate_vm), write the VM's new NIC set and an operation in the caller's
transaction, and bump the VM's generation. The database is changed before qemu is touched:
the VM worker compares a running qemu's guest NICs with the stored ones and plugs or unplugs
the difference (app.supervisor.vms.hotplug); a stopped VM gets them at its next start.

A NIC keeps its `index` for life (qemu's ids nic<index>/net<index> and its tap's name come
from it): removing one leaves a gap, never renumbers the others, and an index is never given
twice while the VM exists (`vms.next_nic_index`). A NIC is named by its `id` (stable, as in
GET /v1/vms/{id}) or by that index.
"""

from __future__ import annotations

from app.db.models import Operation, Vm, VmNic
from app.db.repositories import (
    DependentsRepository,
    HostPortRepository,
    LinkNameRepository,
    PortRepository,
    VfClaimRepository,
    VmRepository,
    vm_spec,
)
from app.db.session import Session
from app.domain.errors import Conflict, InUse, InvalidInput
from app.domain.isolation import require_port_isolation
from app.domain.tenancy import LOCAL_ADMIN, Caller
from app.domain.vm_actions import VmVerb
from app.domain.vm_actions import check as check_action
from app.domain.vms import (
    Machine,
    PowerState,
    VmStatus,
    boot_nic_index,
    hotplug_refusal,
    validate_nic,
    validate_passthrough_bus,
    validate_vm,
)
from app.schemas.vms import NicIn
from app.services.nic_limits import find_nic
from app.services.operations import record_operation
from app.services.port_plugs import unplug_taps
from app.services.ports import LeaseReader
from app.services.restrictions import check_nics
from app.services.vms import HostFacts, VmService, vm_tap_name

MAX_NICS = 16  # as at create (VmCreate.nics)


def qemu_may_run(vm: Vm) -> bool:
    """The VM's qemu runs or is about to (then a NIC change is a hotplug); False only for a
    VM that is stopped and meant to stay so (its NICs are read at the next start)."""
    return vm.pid is not None or vm.power_state == PowerState.RUNNING.value


class VmNicService:
    def __init__(self, session: Session, caller: Caller = LOCAL_ADMIN) -> None:
        self.session = session
        self.caller = caller
        self.vms = VmService(session, caller)

    def _vm(self, ref: str) -> Vm:
        """The VM (404 outside the caller's scope), 409 while it is being deleted."""
        row = self.vms.get(ref)
        check_action(VmStatus(row.status), VmVerb.PATCH, row.name)
        return row

    def find(self, vm: Vm, nic_ref: str) -> VmNic:
        """A NIC of `vm` by its id, or by its index (digits): 404 otherwise."""
        return find_nic(VmRepository(self.session), vm, nic_ref)

    def _next_index(self, vm: Vm, nics: list[VmNic]) -> int:
        """Never an index the VM had before: one past the highest ever given (and past a tap
        name its removed NICs still claim)."""
        index = max([*(n.position + 1 for n in nics), vm.next_nic_index or 0, 0])
        names = LinkNameRepository(self.session)
        while names.get(vm_tap_name(vm.id, index)) is not None:
            index += 1
        return index

    def add(
        self, ref: str, body: NicIn, host: HostFacts, leases: LeaseReader | None = None
    ) -> tuple[Vm, VmNic, Operation]:
        """Add a NIC as at create. On a VM whose qemu runs (or is starting), only a NIC that
        can be hot-plugged (app.domain.vms.hotplug_refusal: 409 with the reason otherwise)."""
        vm = self._vm(ref)
        check_nics(self.caller, [body], one=True)
        nics = list(self.vms.nics(vm.id))
        if len(nics) >= MAX_NICS:
            raise InvalidInput(f"VM {vm.name!r} has {len(nics)} NICs, the most a VM may have")
        validate_passthrough_bus(body.backend, Machine(vm.machine))  # before a VF is claimed
        index = self._next_index(vm, nics)
        taken = VmRepository(self.session).nic_macs() | PortRepository(self.session).macs()
        row, spec = self.vms.new_nic(vm.id, index, body, taken, host.vlans, host)
        # the new NIC alone first: its refusal is about the body sent (no `nics[i]`, no index
        # it never had); validate_vm below adds the rules between NICs
        validate_nic(spec, Machine(vm.machine), host.nic_models, host.vhost_missing)
        if body.isolated:
            require_port_isolation(host.isolation_missing)
        if qemu_may_run(vm):
            refusal = hotplug_refusal(spec, Machine(vm.machine))
            if refusal is not None:
                raise Conflict(f"VM {vm.name!r} runs: {refusal}; stop it to add this NIC")
        self.session.add(row)
        self.vms.nic_settings(row, body, vm.project_id, leases)
        validate_vm(vm_spec(vm, [*nics, row]), host.nic_models, host.vhost_missing)
        vm.next_nic_index = index + 1
        return vm, row, self._bump(vm)

    def _keeps_a_boot_nic(self, vm: Vm, nic: VmNic) -> None:
        """409 when `vm` boots from the network and `nic` is its last NIC that can (the
        state create refuses: app.domain.vms.boot_nic_index)."""
        if not (vm.boot or {}).get("network"):
            return
        others = [n for n in self.vms.nics(vm.id) if n.id != nic.id]
        if boot_nic_index(vm_spec(vm, others)) is None:
            raise Conflict(
                f"VM {vm.name!r} boots from the network through NIC {nic.position}, its "
                "last NIC with an iPXE option ROM: change its boot (PATCH) or add another "
                "such NIC first"
            )

    def remove(self, ref: str, nic_ref: str) -> tuple[Vm, Operation]:
        """Remove a NIC: its fixed address (static lease), host port claims and rules go with
        it, a port it plugged is free again. 409 `in-use` while port forwards target it; 409
        on a running VM for a NIC that cannot be unplugged there (hotplug_refusal)."""
        vm = self._vm(ref)
        nic = self.find(vm, nic_ref)
        if qemu_may_run(vm):
            spec = vm_spec(vm, [nic]).nics[0]
            refusal = hotplug_refusal(spec, Machine(vm.machine))
            if refusal is not None:
                raise Conflict(f"VM {vm.name!r} runs: {refusal}; stop it to remove this NIC")
        self._keeps_a_boot_nic(vm, nic)
        dependents = DependentsRepository(self.session)
        forwards = dependents.forwards_to_nic(nic.id)
        if forwards:
            names = ", ".join(repr(f.name) for f in forwards)
            raise InUse(f"port forwards {names} target NIC {nic.position}: delete them first")
        peers = dependents.peer_nics(vm.id, nic.id)
        if peers:
            raise InUse(
                f"NICs of other VMs connect to this VM's sockets "
                f"({', '.join(p.id for p, _ in peers)}): remove them first"
            )
        HostPortRepository(self.session).release([nic.id])
        VfClaimRepository(self.session).release_nics([nic.id])  # its VF is free again
        unplug_taps(self.session, [nic.tap_id])  # a port it plugged is free again
        vm.next_nic_index = max(vm.next_nic_index or 0, nic.position + 1)
        # its tap's name stays claimed (LinkName) until the VM goes: the worker removes the
        # tap once qemu has let it go, and no other NIC of this VM is given the name
        self.session.delete(nic)
        self.session.flush()
        return vm, self._bump(vm)

    def _bump(self, vm: Vm) -> Operation:
        """A new generation the worker settles once the running qemu has the stored NICs
        (a stopped VM: at once); not a power intent, and nothing waits for a restart."""
        vm.generation += 1
        return record_operation(self.session, "update", "vm", vm, self.caller)
