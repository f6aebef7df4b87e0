"""In-use protection for every delete (the graph and the force rules: app.domain.dependents).

A delete asks its `InUseGuard` for the resource's dependents inside the request's own
transaction: without `force` any dependent refuses the delete (409 `in-use`, listing each as
kind, id and name) before anything changed; with `force` the guard detaches every dependent
in that same transaction and remembers what it did, which the delete's operation records
(`detached`). Either way the delete can never leave a row a worker cannot remove (a foreign
key still pointing at it): whatever would point at it is gone or re-pointed first.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.db.models import (
    Bridge,
    Network,
    Operation,
    Port,
    PortForward,
    ResourceColumns,
    Tap,
    Uplink,
    Vlan,
    Vm,
    VmNic,
)
from app.db.repositories import (
    DependentsRepository,
    FinishedOperation,
    NetworkRepository,
    OperationRepository,
    PortRepository,
    VlanRepository,
    uplink_of,
    vlan_users,
)
from app.db.session import Session
from app.domain.dependents import Dependent, DependentKind, ForceAction, describe
from app.domain.errors import InUse
from app.domain.status import Status
from app.domain.tenancy import LOCAL_ADMIN, Caller
from app.domain.vms import PowerState, VmStatus
from app.services.operations import bump, record_operation
from app.services.port_plugs import settle_at_once, unplug_taps

K = DependentKind


def nic_dependent(nic: VmNic, vm: Vm, action: ForceAction | None = None) -> Dependent:
    return Dependent(K.VM_NIC, nic.id, f"{vm.name}/{nic.position}", vm.id, action)


DEPENDENT_MODELS: dict[DependentKind, type[ResourceColumns]] = {
    K.VM: Vm,
    K.TAP: Tap,
    K.NETWORK: Network,
    K.UPLINK: Uplink,
    K.PORT_FORWARD: PortForward,
    K.VLAN: Vlan,
    K.PORT: Port,
}


def hidden_dependent(dependent: Dependent) -> Dependent:
    """A dependent of another project: its kind only (no id, no name)."""
    return Dependent(dependent.kind, "", "(another project's)", None, dependent.action)


def _row_dependent(
    kind: DependentKind, row: Tap | Network | PortForward | Vlan | Port
) -> Dependent:
    return Dependent(kind, row.id, row.name)


class InUseGuard:
    """Finds the dependents of one delete and, when forced, detaches them (one per request)."""

    def __init__(self, session: Session, caller: Caller = LOCAL_ADMIN) -> None:
        self.session = session
        self.caller = caller
        self.repo = DependentsRepository(session)
        self.detached: list[Dependent] = []
        self._changed_vms: set[str] = set()

    # ---- the check -------------------------------------------------------------------------

    def refuse(self, what: str, dependents: Sequence[Dependent]) -> None:
        """409 `in-use` naming every dependent, unless there is none (another project's
        only as that: shown_to)."""
        if not dependents:
            return
        shown = self.shown(dependents)
        raise InUse(
            f"{what} is in use by {describe(shown)}; delete or detach them first, "
            "or pass ?force=true to detach them with it",
            dependents=[d.as_dict() for d in shown],
        )

    def record(self, operation: Operation) -> Operation:
        """The delete's operation says what the forced delete did (None: nothing)."""
        operation.detached = [d.as_dict() for d in self.shown(self.detached)] or None
        return operation

    def shown(self, dependents: Sequence[Dependent]) -> list[Dependent]:
        """The dependents as the caller may see them: one of a project its scope does not
        see (an admin put it on a shared segment) keeps only its kind (issue 11: another
        project's resources are never revealed)."""
        scope = self.caller.scope
        if scope.project_id is None:
            return list(dependents)
        return [
            d if self._project_of(d) in (scope.project_id, None) else hidden_dependent(d)
            for d in dependents
        ]

    def _project_of(self, dependent: Dependent) -> str | None:
        model, row_id = DEPENDENT_MODELS.get(dependent.kind), dependent.vm_id or dependent.id
        if dependent.kind is K.VM_NIC:
            model = Vm
        row = self.session.get(model, row_id) if model is not None else None
        return row.project_id if row is not None else None

    # ---- networks --------------------------------------------------------------------------

    def network_dependents(self, row: Network) -> list[Dependent]:
        nics = [nic_dependent(nic, vm) for nic, vm in self.repo.nics_on_network(row.id)]
        forwards = self.repo.forwards_on_network(row.id)
        ports = PortRepository(self.session).on_network(row.id)  # their fixed addresses
        return [
            *nics,
            *(_row_dependent(K.PORT_FORWARD, f) for f in forwards),
            *(_row_dependent(K.PORT, p) for p in ports),
        ]

    def delete_network(self, row: Network, force: bool) -> Operation:
        """Mark a network deleted: its forwards are deleted, its NICs keep their link and
        lose their fixed address; its link loses the gateway address."""
        if not force:
            self.refuse(f"network {row.name!r}", self.network_dependents(row))
        for nic, vm in self.repo.nics_on_network(row.id):
            self.detached.append(nic_dependent(nic, vm, ForceAction.ADDRESS_RELEASED))
        for nic in NetworkRepository(self.session).nics(row.id):  # VMs on their way out too
            nic.network_id, nic.ipv4 = None, None
            nic.observed_ipv4, nic.address_status_reason = None, None
        for forward in self.repo.forwards_on_network(row.id):
            self._delete_forward(forward)
        for port in PortRepository(self.session).on_network(row.id):
            port.network_id = port.ipv4 = None
            settle_at_once(port)
            self.detached.append(
                Dependent(K.PORT, port.id, port.name, action=ForceAction.ADDRESS_RELEASED)
            )
        row.deleted = True
        bump(row, Status.DELETING)
        link = NetworkRepository(self.session).link(row)
        if link is not None and not link.deleted:
            bump(link)  # the gateway address goes
        return record_operation(self.session, "delete", "network", row, self.caller)

    def _delete_forward(self, forward: PortForward) -> None:
        forward.deleted = True
        bump(forward, Status.DELETING)
        record_operation(self.session, "delete", "port_forward", forward, self.caller)
        self.detached.append(
            Dependent(K.PORT_FORWARD, forward.id, forward.name, action=ForceAction.DELETED)
        )

    # ---- links -----------------------------------------------------------------------------

    def bridge_dependents(self, row: Bridge, count_taps: bool = True) -> list[Dependent]:
        found = [nic_dependent(nic, vm) for nic, vm in self.repo.nics_on_bridge(row.id)]
        taps, ports = self._ports_apart(self.repo.taps_on_bridge(row.id))
        if count_taps:
            found += [_row_dependent(K.TAP, t) for t in taps]
        found += ports
        found += self._network_of(row)
        uplink = uplink_of(self.session, row.id)
        if uplink is not None and not uplink.deleted:
            found.append(Dependent(K.UPLINK, uplink.id, uplink.name))
        for vlan in VlanRepository(self.session).on_trunk(row.id, live_only=True):
            # the VLAN, and the network on it (its taps and NICs are on the trunk: above)
            found += [_row_dependent(K.VLAN, vlan), *self._network_of(vlan)]
        return found

    def tap_dependents(self, row: Tap) -> list[Dependent]:
        found = [nic_dependent(nic, vm) for nic, vm in self.repo.nics_on_tap(row.id)]
        return found + self._network_of(row)

    def _network_of(self, obj: Bridge | Tap | Vlan) -> list[Dependent]:
        """The live network on a segment object (a bridge, tap or VLAN)."""
        network = NetworkRepository(self.session).of_object(obj)
        if network is None or network.deleted:
            return []
        return [_row_dependent(K.NETWORK, network)]

    def free_bridge(self, row: Bridge) -> None:
        """Force: the bridge's VM NICs leave their VMs, its network goes, its taps are
        detached, its uplink moves the host's configuration back and its VLANs go with the
        networks on them."""
        self.refuse_ports(f"bridge {row.name!r}", self.repo.taps_on_bridge(row.id))
        for nic, vm in self.repo.nics_on_bridge(row.id):
            self.remove_nic(nic, vm)
        self._free_network(row)
        for tap in self.repo.taps_on_bridge(row.id):
            self.detach_tap(tap)
        uplink = uplink_of(self.session, row.id)
        if uplink is not None and not uplink.deleted:
            uplink.deleted = True
            bump(uplink, Status.DELETING)
            record_operation(self.session, "delete", "uplink", uplink, self.caller)
            self.detached.append(
                Dependent(K.UPLINK, uplink.id, uplink.name, action=ForceAction.DELETED)
            )
        for vlan in VlanRepository(self.session).on_trunk(row.id, live_only=True):
            self.free_vlan(vlan)  # the network on it; its NICs and taps went above
            self.delete_vlan(vlan)
            self.detached.append(Dependent(K.VLAN, vlan.id, vlan.name, action=ForceAction.DELETED))

    def vlan_dependents(self, row: Vlan) -> list[Dependent]:
        nics, all_taps = vlan_users(self.session, row)
        taps, ports = self._ports_apart(all_taps)
        return (
            [nic_dependent(nic, vm) for nic, vm in nics]
            + [_row_dependent(K.TAP, t) for t in taps]
            + ports
            + self._network_of(row)
        )

    def _ports_apart(self, taps: Sequence[Tap]) -> tuple[list[Tap], list[Dependent]]:
        """Tap resources, and the ports whose taps are among `taps` (as dependents)."""
        ports = PortRepository(self.session).of_taps(t.id for t in taps)
        plain = [t for t in taps if t.id not in ports]
        return plain, [_row_dependent(K.PORT, p) for p in ports.values()]

    def refuse_ports(self, what: str, taps: Sequence[Tap]) -> None:
        """Even a forced delete leaves ports alone: a port on the segment is a 409 naming
        it (delete the port first), so nothing is half-done."""
        _, ports = self._ports_apart(taps)
        if ports:
            shown = self.shown(ports)
            raise InUse(
                f"{what} carries {describe(shown)}, which a forced delete does not delete: "
                "delete the ports first (DELETE /v1/ports/{id})",
                dependents=[d.as_dict() for d in shown],
            )

    def free_vlan(self, row: Vlan) -> None:
        """Force: the VLAN's VM NICs leave their VMs (access ports and trunk NICs carrying
        its VID alike: a guest never keeps a NIC whose segment is gone) and its taps are
        detached from the VLAN and its trunk (back on no bridge, as on a deleted bridge);
        the managed network on it goes."""
        nics, taps = vlan_users(self.session, row)
        self.refuse_ports(f"VLAN {row.name!r}", taps)
        self._free_network(row)
        for nic, vm in nics:
            self.remove_nic(nic, vm)
        for tap in taps:
            self.detach_tap(tap)

    def delete_vlan(self, vlan: Vlan) -> Operation:
        """Mark a VLAN deleted (its users are gone first: vlan_dependents, free_vlan)."""
        vlan.deleted = True
        bump(vlan, Status.DELETING)
        return record_operation(self.session, "delete", "vlan", vlan, self.caller)

    def free_tap(self, row: Tap) -> None:
        """Force: the tap's VM NIC leaves its VM, and the network on the tap goes."""
        for nic, vm in self.repo.nics_on_tap(row.id):
            self.remove_nic(nic, vm)
        self._free_network(row)

    def _free_network(self, obj: Bridge | Tap | Vlan) -> None:
        network = NetworkRepository(self.session).of_object(obj)
        if network is not None and not network.deleted:
            self.delete_network(network, force=True)
            self.detached.append(
                Dependent(K.NETWORK, network.id, network.name, action=ForceAction.DELETED)
            )

    def detach_tap(self, tap: Tap) -> None:
        tap.bridge_id = tap.vlan_id = None
        tap.isolated = False  # the port flag goes with the bridge port
        bump(tap)
        record_operation(self.session, "update", "tap", tap, self.caller)
        self.detached.append(Dependent(K.TAP, tap.id, tap.name, action=ForceAction.DETACHED))

    # ---- VMs -------------------------------------------------------------------------------

    def vm_dependents(self, row: Vm) -> list[Dependent]:
        forwards = [_row_dependent(K.PORT_FORWARD, f) for f in self.repo.forwards_to_vm(row.id)]
        peers = [nic_dependent(nic, vm) for nic, vm in self.repo.peer_nics(row.id)]
        return forwards + peers

    def free_vm(self, row: Vm) -> None:
        """Force: the forwards to the VM are deleted and the NICs of other VMs that connect
        to its sockets leave their VMs."""
        for forward in self.repo.forwards_to_vm(row.id):
            self._delete_forward(forward)
        for nic, vm in self.repo.peer_nics(row.id):
            self.remove_nic(nic, vm)

    def remove_nic(self, nic: VmNic, vm: Vm) -> None:
        """A NIC leaves its VM (with its forwards); a running VM is stopped, so the guest
        never keeps a NIC whose backend is gone; it starts again without it."""
        self.detached.append(nic_dependent(nic, vm, ForceAction.REMOVED))
        forwards = self.repo.forwards_to_nic(nic.id)
        finished = [
            FinishedOperation(f.id, f.generation, "succeeded")
            if f.deleted
            else FinishedOperation(f.id, f.generation, "failed", "removed with its target NIC")
            for f in forwards
        ]
        self.detached += [
            Dependent(K.PORT_FORWARD, f.id, f.name, action=ForceAction.DELETED)
            for f in forwards
            if not f.deleted
        ]
        self.repo.remove_nic(nic)
        unplug_taps(self.session, [nic.tap_id])  # a port it plugged is free again
        OperationRepository(self.session).finish(finished)  # none is left waiting for them
        stopping = vm.power_state == PowerState.RUNNING.value
        if stopping:
            vm.power_state = PowerState.STOPPED.value
            self.detached.append(Dependent(K.VM, vm.id, vm.name, action=ForceAction.STOPPED))
        if vm.id not in self._changed_vms:
            self._changed_vms.add(vm.id)
            vm.generation += 1
            vm.status, vm.status_reason = VmStatus.PENDING.value, None
            record_operation(self.session, "update", "vm", vm, self.caller)
        vm.spec_generation = vm.generation  # its NICs changed: qemu gets them at the next start
        if stopping:  # a power action, as app.domain.vm_actions means it (not a PATCH)
            vm.intent_generation = vm.generation
