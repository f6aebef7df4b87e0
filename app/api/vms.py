"""/v1/vms: virtual machines (create, inspect, change, start, stop, kill, reboot, delete,
console). What each action does from each status is the table in app.domain.vm_actions."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import PlainTextResponse, StreamingResponse

from app.api.deps import AppContext, Cursor, Limit, ProjectFilter, Wait, caller_of, context
from app.api.presenters import vm_out
from app.api.strict import StrictRoute
from app.api.waiting import settle_response
from app.db.models import Operation, Vm
from app.domain.errors import Unavailable
from app.domain.nics import HostLink, nic_driver
from app.domain.nics.offloads import negotiated
from app.domain.sriov import VFIO_DRIVER as VFIO_DEVICE
from app.domain.virtio import backend_path, parse_status
from app.domain.vm_actions import VmVerb
from app.domain.vms import MTU_MODEL, PERIPHERALS, peripheral_nics
from app.schemas.common import PROBLEM_RESPONSES
from app.schemas.vms import DeviceOut, LinkState, NicIn, VmCreate, VmPage, VmPatch
from app.schemas.vms import Vm as VmOut
from app.services.port_security import observed_states
from app.services.vm_nics import VmNicService
from app.services.vms import HostFacts, VmPowerService, VmService

router = APIRouter(
    prefix="/v1/vms", tags=["vms"], responses=PROBLEM_RESPONSES, route_class=StrictRoute
)

PENDING: dict[int | str, dict[str, Any]] = {202: {"model": VmOut, "description": "Accepted"}}
CONSOLE_TAIL_MAX = 1 << 20
CONSOLE_POLL_SECONDS = 0.2


async def _present(ctx: AppContext, row: Vm) -> VmOut:
    nics = await ctx.read(lambda s: VmService(s).nics(row.id))
    return vm_out(row, nics)


async def _finish(
    ctx: AppContext,
    response: Response,
    row: Vm,
    op: Operation | None,
    wait: float | None,
    settled_status: int,
) -> VmOut | Response:
    result = await settle_response(ctx, response, "vms", row, op, wait, settled_status)
    return result if isinstance(result, Response) else await _present(ctx, result)


NIC_REF = (
    "The NIC's `id` (stable), or its `index` (ASCII digits): an index is the NIC's for life, "
    "never shifts when another NIC goes, and is never given twice while the VM exists"
)
NicRef = Annotated[str, Path(description=NIC_REF, max_length=64)]


@router.post(
    "",
    operation_id="create_vm",
    status_code=202,
    response_model=VmOut,
    responses={201: {"model": VmOut, "description": "Created and settled (with ?wait=)"}},
)
async def create_vm(
    body: VmCreate, response: Response, request: Request, wait: Wait = None
) -> VmOut | Response:
    """Create a VM; with power_state running (the default) it starts at once."""
    ctx, caller = context(request), caller_of(request)
    host = await host_facts(ctx, body.nics)
    leases = ctx.inspector.leases
    row, _, op = await ctx.mutate(
        lambda s: VmService(s, caller).create(body, host, leases, ctx.tenant_images)
    )
    return await _finish(ctx, response, row, op, wait, 201)


async def host_facts(ctx: AppContext, nics: Sequence[NicIn]) -> HostFacts:
    """The probed host's facts for creating `nics`: the capabilities, each macvtap parent as
    netlink reports it now, and the SR-IOV pool where a NIC takes a VF."""
    host = HostFacts.from_capabilities(await ctx.host(ctx.inspector.capabilities))
    parents = {nic.parent for nic in nics if nic.parent is not None}
    if parents:  # macvtap NICs: their parents as netlink reports them now
        looked_up = {name: await ctx.host(ctx.inspector.parent_link, name) for name in parents}
        host = dataclasses.replace(host, parents=looked_up)
    if any(nic_driver(nic.backend).host_link is HostLink.VF for nic in nics):
        host = dataclasses.replace(host, sriov=await ctx.host(ctx.inspector.sriov_pool))
    return host


@router.get("", operation_id="list_vms", response_model=VmPage)
async def list_vms(
    request: Request, limit: Limit = 100, cursor: Cursor = None, project: ProjectFilter = None
) -> VmPage:
    ctx = context(request)

    def page(session: Any) -> tuple[list[VmOut], str | None]:
        service = VmService(session, caller_of(request))
        rows, next_cursor = service.page(limit, cursor, project)
        return [vm_out(row, service.nics(row.id)) for row in rows], next_cursor

    items, next_cursor = await ctx.read(page)
    return VmPage(items=items, next_cursor=next_cursor)


@router.get("/{vm_id}", operation_id="get_vm", response_model=VmOut)
async def get_vm(vm_id: str, request: Request) -> VmOut:
    ctx = context(request)
    row = await ctx.read(lambda s: VmService(s, caller_of(request)).get(vm_id))
    nics = await ctx.read(lambda s: VmService(s).nics(row.id))
    states = None
    if any(n.port_security for n in nics):  # read from the kernel, with counters
        table = await ctx.host(ctx.inspector.port_security_table)
        states = await ctx.read(lambda s: observed_states(s, nics, table))
    return vm_out(row, nics, states)


async def _act(
    request: Request, response: Response, vm_id: str, verb: VmVerb, wait: float | None
) -> VmOut | Response:
    """start, stop or kill as the action table says (app.domain.vm_actions)."""
    ctx, caller = context(request), caller_of(request)
    row, op = await ctx.mutate(lambda s: VmPowerService(s, caller).act(vm_id, verb))
    return await _finish(ctx, response, row, op, wait, 200)


ACTION_RESPONSES: dict[int | str, dict[str, Any]] = {
    **PENDING,
    200: {"model": VmOut, "description": "Nothing to do, or settled (with ?wait=)"},
}


@router.post(
    "/{vm_id}/start", operation_id="start_vm", response_model=VmOut, responses=ACTION_RESPONSES
)
async def start_vm(
    vm_id: str, request: Request, response: Response, wait: Wait = None
) -> VmOut | Response:
    """Start qemu. A stopped, crashed or failed VM starts again (a new start clears its
    restart backoff and crash loop); a starting or running one answers 200 unchanged; a
    stopping one starts again once qemu has ended; 409 while it is being deleted."""
    return await _act(request, response, vm_id, VmVerb.START, wait)


@router.post(
    "/{vm_id}/stop", operation_id="stop_vm", response_model=VmOut, responses=ACTION_RESPONSES
)
async def stop_vm(
    vm_id: str, request: Request, response: Response, wait: Wait = None
) -> VmOut | Response:
    """Graceful: ACPI powerdown, then QMP quit, then SIGTERM, then SIGKILL, each with a
    deadline. The restart policy never undoes an explicit stop. A stopped VM answers 200
    unchanged; a crashed or failed one becomes stopped; 409 while it is being deleted."""
    return await _act(request, response, vm_id, VmVerb.STOP, wait)


@router.post(
    "/{vm_id}/kill", operation_id="kill_vm", response_model=VmOut, responses=ACTION_RESPONSES
)
async def kill_vm(
    vm_id: str, request: Request, response: Response, wait: Wait = None
) -> VmOut | Response:
    """Stop at once with SIGKILL (no guest power-down); the VM stays stopped. Escalates a
    graceful stop under way; on a VM that does not run it is the same as stop; 409 while it
    is being deleted (DELETE ?force=true escalates that)."""
    return await _act(request, response, vm_id, VmVerb.KILL, wait)


@router.patch(
    "/{vm_id}",
    operation_id="update_vm",
    response_model=VmOut,
    responses={202: {"model": VmOut, "description": "Accepted, not yet seen by the worker"}},
)
async def update_vm(
    vm_id: str, body: VmPatch, request: Request, response: Response, wait: Wait = None
) -> VmOut | Response:
    """Change vcpus, memory_mib, machine, accelerator, boot, restart_policy or run_as (see
    the body's schema for null). Never starts or stops the VM: restart_policy applies at
    once, the rest at the next start of qemu (`restart_pending` shows it). 409 while the VM
    is being deleted; 422 when the result would not be a valid VM."""
    ctx, caller = context(request), caller_of(request)
    host = HostFacts.from_capabilities(await ctx.host(ctx.inspector.capabilities))
    row, op = await ctx.mutate(
        lambda s: VmPowerService(s, caller).update(vm_id, body, host, ctx.tenant_images)
    )
    return await _finish(ctx, response, row, op, wait, 200)


@router.delete(
    "/{vm_id}",
    operation_id="delete_vm",
    status_code=202,
    response_model=VmOut,
    responses={204: {"description": "Deleted (with ?wait=)"}},
)
async def delete_vm(
    vm_id: str,
    request: Request,
    response: Response,
    wait: Wait = None,
    force: Annotated[
        bool,
        Query(
            description="SIGKILL instead of the shutdown ladder, and delete even while port "
            "forwards target the VM or other VMs' socket NICs connect to it (the forwards "
            "are deleted, those NICs leave their VMs; see the operation's `detached`)"
        ),
    ] = False,
) -> VmOut | Response:
    """Stops the VM first, then removes everything of it (taps, run directory, claims).
    409 `in-use` (listing `dependents`) while port forwards target it or socket NICs of
    other VMs connect to it, unless ?force=true."""
    ctx, caller = context(request), caller_of(request)
    row, op = await ctx.mutate(lambda s: VmPowerService(s, caller).delete(vm_id, force))
    return await _finish(ctx, response, row, op, wait, 202)


@router.get(
    "/{vm_id}/console",
    operation_id="get_vm_console",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def get_vm_console(
    vm_id: str,
    request: Request,
    tail: Annotated[int, Query(ge=1, le=CONSOLE_TAIL_MAX, description="Last N bytes")] = 65536,
    follow: Annotated[
        bool, Query(description="Keep streaming what the guest prints (like tail -f)")
    ] = False,
) -> Response:
    """The serial console log: the last `tail` bytes, and with follow=true everything the
    guest prints after that, until the client hangs up or the daemon stops."""
    ctx = context(request)
    row = await ctx.read(lambda s: VmService(s, caller_of(request)).get(vm_id))
    text, offset = await ctx.host(ctx.inspector.vm_console, row.id, -tail)
    if not follow:
        return PlainTextResponse(text.decode("utf-8", "replace"))

    async def stream() -> AsyncIterator[bytes]:
        nonlocal offset
        yield text
        while not ctx.drain.begun and not await request.is_disconnected():
            data, offset = await ctx.host(ctx.inspector.vm_console, row.id, offset)
            if data:
                yield data
            else:
                await asyncio.sleep(CONSOLE_POLL_SECONDS)

    return StreamingResponse(stream(), media_type="text/plain")


QMP_TIMEOUT = 5.0


def _qmp(ctx: AppContext, vm_id: str, command: str, **args: object) -> Any:
    return ctx.vm_control.execute(vm_id, command, args or None, QMP_TIMEOUT)


def _host_mtu(ctx: AppContext, vm_id: str, path: str) -> int | None:
    """virtio-net's host_mtu as qemu has it (0: none advertised, reported as None)."""
    value = _qmp(ctx, vm_id, "qom-get", path=path, property="host_mtu")
    return int(value) or None


def _virtio_facts(ctx: AppContext, vm_id: str, path: str) -> dict[str, Any]:
    """DeviceOut's vhost, guest_features and negotiated offloads, from qemu's own report
    (x-query-virtio-status; nothing when this qemu lacks that command or answers oddly)."""
    try:
        reply = _qmp(ctx, vm_id, "x-query-virtio-status", path=backend_path(path))
    except Unavailable:
        return {}
    status = parse_status(reply)
    if status is None:
        return {}
    started = status.driver_ok
    return {
        "vhost": status.vhost if started else None,
        "guest_features": list(status.guest_features),
        "offloads": negotiated(status.guest_features) if started else None,
    }


@router.get("/{vm_id}/devices", operation_id="list_vm_devices", response_model=list[DeviceOut])
async def list_vm_devices(vm_id: str, request: Request) -> list[DeviceOut]:
    """The guest NICs as the running qemu reports them (its devices nic<index> under QOM's
    /machine/peripheral, with their type, MAC and virtio's host_mtu; for virtio, whether
    vhost-net carries it and the features and offloads the guest negotiated): proof that
    the device really exists, e.g. an ISA NE2000 on the isapc machine, or a NIC hot-plugged
    (or not yet unplugged). 409 when not running."""
    ctx = context(request)
    row = await ctx.read(lambda s: VmService(s, caller_of(request)).get(vm_id))
    nics = await ctx.read(lambda s: VmService(s).nics(row.id))
    stored = {f"nic{nic.position}": nic for nic in nics}

    def observe() -> list[DeviceOut]:
        devices = []
        listing = _qmp(ctx, row.id, "qom-list", path=PERIPHERALS)
        for index in sorted(peripheral_nics(listing)):
            path = f"{PERIPHERALS}/nic{index}"
            kind = str(_qmp(ctx, row.id, "qom-get", path=path, property="type"))
            nic = stored.get(f"nic{index}")
            if kind == VFIO_DEVICE:  # a VF passed through: no mac property, a host device
                host = str(_qmp(ctx, row.id, "qom-get", path=path, property="host"))
                devices.append(DeviceOut(id=f"nic{index}", type=kind, host=host))
                continue
            devices.append(
                DeviceOut(
                    id=f"nic{index}",
                    type=kind,
                    mac=str(_qmp(ctx, row.id, "qom-get", path=path, property="mac")),
                    link_up=nic.link_up if nic is not None else None,
                    mtu=_host_mtu(ctx, row.id, path) if kind == MTU_MODEL else None,
                    **(_virtio_facts(ctx, row.id, path) if kind == MTU_MODEL else {}),
                )
            )
        return devices

    return await ctx.host(observe)


@router.post("/{vm_id}/reboot", operation_id="reboot_vm", status_code=204)
async def reboot_vm(vm_id: str, request: Request) -> Response:
    """A hard reset of the guest (QMP system_reset), at once; 409 when the VM is not
    running (the action table, app.domain.vm_actions). Changes waiting for a restart
    (`restart_pending`) are not applied by a reset: qemu keeps running."""
    ctx = context(request)
    row = await ctx.read(lambda s: VmPowerService(s, caller_of(request)).reboot_target(vm_id))
    await ctx.host(_qmp, ctx, row.id, "system_reset")
    return Response(status_code=204)


@router.put("/{vm_id}/nics/{index}/link", operation_id="set_vm_nic_link", response_model=DeviceOut)
async def set_vm_nic_link(
    vm_id: str, index: NicRef, body: LinkState, request: Request
) -> DeviceOut:
    """Pull or plug the virtual cable of one NIC at run time (QMP set_link); the NIC by its
    index or id (404 otherwise)."""
    ctx = context(request)
    row = await ctx.read(lambda s: VmService(s, caller_of(request)).get(vm_id))
    nic = await ctx.read(lambda s: VmNicService(s).find(row, index))
    # a guest NIC is the device nic<i>; a hub join has only its backend, net<i>
    position = nic.position
    target = f"nic{position}" if nic.model is not None else f"net{position}"
    await ctx.host(lambda: _qmp(ctx, row.id, "set_link", name=target, up=body.up))
    await ctx.mutate(lambda s: VmService(s).record_link(nic.id, body.up))
    return DeviceOut(id=target, type=nic.model or "hubport", mac=nic.mac, link_up=body.up)
