"""/v1/vms/{id}/nics: add a NIC to a VM and remove one, running or stopped (issue 13 item 6),
and change a NIC's rate limits (PATCH .../nics/{index}, applied at once on a running VM's
tap by tc).

The change is stored first (app.services.vm_nics); the VM worker then plugs a running
qemu's new NIC (its tap made and handed over by descriptor, QMP getfd, netdev_add,
device_add) or unplugs a removed one (device_del, the guest's release seen as
DEVICE_DELETED, netdev_del, then its tap goes). A stopped VM gets its NICs at its next start.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import JsonValue

from app.api.deps import AppContext, Wait, caller_of, context
from app.api.presenters import vm_out
from app.api.strict import StrictRoute
from app.api.vms import NicRef, host_facts
from app.api.waiting import settle_response
from app.db.models import Vm
from app.db.session import Session
from app.domain.tenancy import Caller
from app.domain.vms import Vhost
from app.schemas.common import PROBLEM_RESPONSES
from app.schemas.vms import NicIn, NicOut, NicPatch
from app.schemas.vms import Vm as VmOut
from app.services.nic_limits import NicLimitService
from app.services.vm_nics import VmNicService
from app.services.vms import VmService

router = APIRouter(
    prefix="/v1/vms", tags=["vms"], responses=PROBLEM_RESPONSES, route_class=StrictRoute
)


@router.post(
    "/{vm_id}/nics",
    operation_id="add_vm_nic",
    status_code=202,
    response_model=NicOut,
    responses={201: {"model": NicOut, "description": "Added, and plugged (with ?wait=)"}},
)
async def add_vm_nic(
    vm_id: str, body: NicIn, request: Request, response: Response, wait: Wait = None
) -> NicOut | Response:
    """Add a NIC, validated as at create (backend, VLAN, fixed `ipv4` on a managed network,
    port security, isolation). It gets the next `index` (never one the VM had before).
    A stopped VM gets it at its next start. On a VM whose qemu runs (or is starting) it is
    hot-plugged: only a PCI model (virtio-net-pci, e1000, ...) on the bridge, tap, port or macvtap
    backend of a pc or q35 VM (409 with the reason otherwise: stop the VM first). On q35 it
    takes one of the 4 spare PCIe root ports the VM started with; with none free it waits for
    a NIC's removal or the VM's next start (said in the VM's `status_reason`). A VM has at
    most 16 NICs (422). Answers 202 with the NIC while the VM has not settled (the VM's
    operation in the headers), 201 once it has (with ?wait=); a plug that failed shows in the
    VM's `status_reason`."""
    ctx, caller = context(request), caller_of(request)
    host = await host_facts(ctx, [body])
    leases = ctx.inspector.leases
    row, nic, op = await ctx.mutate(
        lambda s: VmNicService(s, caller).add(vm_id, body, host, leases)
    )
    settled = await settle_response(ctx, response, "vms", row, op, wait, 201)
    if isinstance(settled, Response):
        return settled
    nics = await ctx.read(lambda s: VmService(s).nics(settled.id))
    shown = vm_out(settled, nics).nics
    return next(n for n in shown if n.id == nic.id)


@router.delete(
    "/{vm_id}/nics/{index}",
    operation_id="remove_vm_nic",
    status_code=202,
    response_model=VmOut,
    responses={200: {"model": VmOut, "description": "Removed, and unplugged (with ?wait=)"}},
)
async def remove_vm_nic(
    vm_id: str,
    index: NicRef,
    request: Request,
    response: Response,
    wait: Wait = None,
) -> VmOut | Response:
    """Remove a NIC (`index`: its index, or its id). Its fixed address (the static DHCP lease),
    port security rules and host port claims go; a port it plugged is free again. On a
    running VM the guest must release the device (ACPI PCI hotplug on pc, PCIe native hotplug
    on q35): until then, or when it does not within the unplug deadline (20 s), the VM's
    `status_reason` says so; its tap goes once qemu has let it go. 409 `in-use` while port
    forwards target the NIC; 409 for the last NIC a network-booted VM can boot from. Answers
    202 with the VM, 200 once it settled (with ?wait=)."""
    ctx, caller = context(request), caller_of(request)
    row, op = await ctx.mutate(lambda s: VmNicService(s, caller).remove(vm_id, index))
    settled = await settle_response(ctx, response, "vms", row, op, wait, 200)
    if isinstance(settled, Response):
        return settled
    return await _present(ctx, settled)


# what a fixed field's null means (as at creation: NicIn), and the fields the daemon observes
# (they change on their own: never compared)
FIXED_NULL_MEANS: dict[str, JsonValue] = {"vhost": Vhost.AUTO.value}
OBSERVED = frozenset({"port_security_state", "observed_ipv4", "address_status_reason"})


async def _fixed_unchanged(
    ctx: AppContext, caller: Caller, vm_id: str, index: str, body: NicPatch
) -> None:
    """422 at each field fixed at creation the PATCH sent with another value than the NIC's
    (as GET shows it); the same value is no change. 404 for an unknown VM or NIC. The fixed
    fields never change, so reading them before the change's own transaction is no race."""
    sent = {k: v for k, v in body.fixed_sent().items() if k not in OBSERVED}
    if not sent:
        return

    def shown(session: Session) -> dict[str, Any]:
        service = VmNicService(session, caller)
        vm = service.vms.get(vm_id)
        nic = service.find(vm, index)
        out = vm_out(vm, service.vms.nics(vm.id))
        return next(n for n in out.nics if n.id == nic.id).model_dump(mode="json")

    nic = await ctx.read(shown)
    errors = [
        {"loc": ["body", name], "msg": NicPatch.fixed_messages[name], "type": "fixed_at_creation"}
        for name, value in sent.items()
        if name not in nic or nic[name] != (FIXED_NULL_MEANS.get(name) if value is None else value)
    ]
    if errors:
        raise RequestValidationError(errors)


async def _present(ctx: AppContext, row: Vm) -> VmOut:
    nics = await ctx.read(lambda s: VmService(s).nics(row.id))
    return vm_out(row, nics)


@router.patch(
    "/{vm_id}/nics/{index}",
    operation_id="update_vm_nic",
    response_model=VmOut,
    responses={202: {"model": VmOut, "description": "Accepted, not yet applied by the worker"}},
)
async def update_vm_nic(
    vm_id: str,
    index: NicRef,
    body: NicPatch,
    request: Request,
    response: Response,
    wait: Wait = None,
) -> VmOut | Response:
    """Change a NIC's rate limits (`index`: its index, or its id): ingress_kbps (towards the
    guest, kbit/s), egress_kbps (from the guest, kbit/s), burst_kib (KiB); other fields are
    422 (fixed at creation). A running VM gets them at once on its tap (tc: no restart); a
    stopped one at its next start. Answers the VM: 200 when nothing changed or once applied
    (?wait=), 202 before. 404 for an unknown VM or NIC, 409 while the VM is being deleted,
    422 for a NIC whose backend has no tap of its own (only the bridge backend's have
    limits)."""
    ctx, caller = context(request), caller_of(request)
    await _fixed_unchanged(ctx, caller, vm_id, index, body)
    row, op = await ctx.mutate(lambda s: NicLimitService(s, caller).update(vm_id, index, body))
    settled = await settle_response(ctx, response, "vms", row, op, wait, 200)
    if isinstance(settled, Response):
        return settled
    return await _present(ctx, settled)
