"""/v1/vms/{id}/nics/{index}: one NIC of a VM, by its 0-based position as GET /v1/vms/{id}
lists it. PATCH changes its rate limits (issue 13), applied at once on a running VM's tap."""

from __future__ import annotations

from fastapi import APIRouter, Path, Request, Response

from app.api.deps import Wait, caller_of, context
from app.api.presenters import vm_out
from app.api.strict import StrictRoute
from app.api.waiting import settle_response
from app.schemas.common import PROBLEM_RESPONSES
from app.schemas.vms import NicPatch
from app.schemas.vms import Vm as VmOut
from app.services.nic_limits import NicLimitService
from app.services.vms import VmService

router = APIRouter(
    prefix="/v1/vms", tags=["vms"], responses=PROBLEM_RESPONSES, route_class=StrictRoute
)


@router.patch(
    "/{vm_id}/nics/{index}",
    operation_id="update_vm_nic",
    response_model=VmOut,
    responses={202: {"model": VmOut, "description": "Accepted, not yet applied by the worker"}},
)
async def update_vm_nic(
    vm_id: str,
    body: NicPatch,
    request: Request,
    response: Response,
    index: int = Path(ge=0, le=15, description="The NIC's 0-based position in the VM's `nics`"),
    wait: Wait = None,
) -> VmOut | Response:
    """Change a NIC's rate limits: ingress_kbps (towards the guest, kbit/s), egress_kbps
    (from the guest, kbit/s), burst_kib (KiB); other fields are 422 (fixed at creation).
    A running VM gets them at once on its tap (tc: no restart); a stopped one at its next
    start. Answers the VM: 200 when nothing changed or once applied (?wait=), 202 before.
    404 for an unknown VM or NIC, 409 while the VM is being deleted, 422 for a NIC whose
    backend has no tap of its own (only the bridge backend's have limits)."""
    ctx, caller = context(request), caller_of(request)
    row, op = await ctx.mutate(lambda s: NicLimitService(s, caller).update(vm_id, index, body))
    result = await settle_response(ctx, response, "vms", row, op, wait, 200)
    if isinstance(result, Response):
        return result
    nics = await ctx.read(lambda s: VmService(s).nics(result.id))
    return vm_out(result, nics)
