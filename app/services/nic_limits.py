"""A VM NIC's rate limits (issue 13, app.domain.rate_limits): what a create or a PATCH stores,
checked as a whole; and PATCH /v1/vms/{id}/nics/{index}, which writes the new limits as a new
generation of the VM with an operation. The VM worker applies them on the running qemu's
tap at its next pass (tc: nothing restarts, `restart_pending` stays as it was). Also the
lookup of one NIC by its id or lifelong index (find_nic), which the NIC routes share
(app.services.vm_nics imports it from here: app.services.vms imports this module)."""

from __future__ import annotations

from app.db.models import Operation, Vm, VmNic
from app.db.repositories import VmRepository
from app.db.session import Session
from app.domain.errors import InvalidInput, NotFound
from app.domain.nics import HostLink, find_driver
from app.domain.rate_limits import RateLimit, validate_rate_limit
from app.domain.tenancy import LOCAL_ADMIN, Caller
from app.domain.vm_actions import VmVerb
from app.domain.vm_actions import check as check_action
from app.domain.vms import VmStatus
from app.schemas.vms import RATE_LIMIT_FIELDS, NicPatch
from app.services.operations import record_operation


def nic_rate_limit(
    ingress_kbps: int | None, egress_kbps: int | None, burst_kib: int | None, mtu: int | None
) -> dict[str, int | None]:
    """The columns of a NIC's limits, once they hold together (InvalidInput: 422)."""
    limit = RateLimit(ingress_kbps, egress_kbps, burst_kib)
    if burst_kib is not None and not limit.limited:
        raise InvalidInput(
            "burst_kib needs ingress_kbps or egress_kbps (to remove both limits, set "
            "burst_kib to null as well)"
        )
    validate_rate_limit(limit, mtu)
    return {"ingress_kbps": ingress_kbps, "egress_kbps": egress_kbps, "burst_kib": burst_kib}


def find_nic(vms: VmRepository, vm: Vm, nic_ref: str) -> VmNic:
    """A NIC of `vm` by its id, or by its index (digits): 404 otherwise."""
    nic = vms.nic_by_ref(vm.id, nic_ref)
    if nic is None:
        raise NotFound(f"VM {vm.name!r} has no NIC {nic_ref!r} (an id or an index)")
    return nic


def _has_own_tap(nic: VmNic) -> bool:
    driver = find_driver(nic.backend)
    return driver is not None and driver.host_link is HostLink.VM_TAP


class NicLimitService:
    def __init__(self, session: Session, caller: Caller = LOCAL_ADMIN) -> None:
        self.session = session
        self.caller = caller
        self.vms = VmRepository(session)

    def update(self, ref: str, nic_ref: str, body: NicPatch) -> tuple[Vm, Operation | None]:
        """New limits for a NIC of VM `ref` (`nic_ref`: its id, or its index): 404 for an
        unknown VM or NIC, 409 while the VM is being deleted, 422 when the NIC's backend has
        no tap of its own or the result does not hold together. No change: no new
        generation."""
        row = self.vms.find(ref, self.caller.scope)
        if row is None:
            raise NotFound(f"no VM {ref!r}")
        check_action(VmStatus(row.status), VmVerb.PATCH, row.name)
        nic = find_nic(self.vms, row, nic_ref)
        index = nic.position
        sent = body.model_dump(exclude_unset=True)
        wanted = {name: sent.get(name, getattr(nic, name)) for name in RATE_LIMIT_FIELDS}
        if any(value is not None for value in wanted.values()) and not _has_own_tap(nic):
            raise InvalidInput(
                f"NIC {index} of VM {row.name!r} uses the {nic.backend} backend: rate limits "
                "are for NICs with a tap of their own (the bridge backend)"
            )
        columns = nic_rate_limit(
            wanted["ingress_kbps"], wanted["egress_kbps"], wanted["burst_kib"], nic.mtu
        )
        if all(getattr(nic, name) == value for name, value in columns.items()):
            return row, None
        for name, value in columns.items():
            setattr(nic, name, value)
        row.generation += 1  # not spec_generation: nothing waits for a restart
        return row, record_operation(self.session, "update", "vm", row, self.caller)
