"""/v1/taps: persistent taps (the how-to's `openvpn --mktun --dev tap1`), attach/detach."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from app.api.deps import (
    AppContext,
    Cursor,
    Force,
    Limit,
    Wait,
    context,
    principal_of,
    request_id_of,
)
from app.api.presenters import tap_out
from app.api.strict import StrictRoute
from app.api.waiting import settle_response
from app.db.models import Operation, Tap
from app.schemas.common import PROBLEM_RESPONSES
from app.schemas.links import Tap as TapOut
from app.schemas.links import TapAttach, TapCreate, TapPage, TapUpdate
from app.services.links import TapService

router = APIRouter(
    prefix="/v1/taps", tags=["taps"], responses=PROBLEM_RESPONSES, route_class=StrictRoute
)

PENDING: dict[int | str, dict[str, Any]] = {
    202: {"model": TapOut, "description": "Accepted, pending"}
}


async def _finish(
    ctx: AppContext,
    response: Response,
    row: Tap,
    op: Operation | None,
    wait: float | None,
    settled_status: int,
) -> TapOut | Response:
    result = await settle_response(ctx, response, "taps", row, op, wait, settled_status)
    return result if isinstance(result, Response) else tap_out(result)


@router.post(
    "",
    operation_id="create_tap",
    status_code=202,
    response_model=TapOut,
    responses={201: {"model": TapOut, "description": "Created and settled (with ?wait=)"}},
)
async def create_tap(
    body: TapCreate, response: Response, request: Request, wait: Wait = None
) -> TapOut | Response:
    ctx, request_id, principal = context(request), request_id_of(request), principal_of(request)
    foreign = await ctx.host(ctx.inspector.foreign_link, body.name)
    prefixes = await ctx.prefixes_for(body.addresses)
    facts = await ctx.vlan_facts_for(body.vlan)
    row, op = await ctx.mutate(
        lambda s: TapService(s, request_id, facts).create(body, foreign, prefixes, principal)
    )
    return await _finish(ctx, response, row, op, wait, 201)


@router.get("", operation_id="list_taps", response_model=TapPage)
async def list_taps(request: Request, limit: Limit = 100, cursor: Cursor = None) -> TapPage:
    ctx = context(request)
    rows, next_cursor = await ctx.read(lambda s: TapService(s).page(limit, cursor))
    return TapPage(items=[tap_out(r) for r in rows], next_cursor=next_cursor)


@router.get("/{tap_id}", operation_id="get_tap", response_model=TapOut)
async def get_tap(tap_id: str, request: Request) -> TapOut:
    ctx = context(request)
    return tap_out(await ctx.read(lambda s: TapService(s).get(tap_id)))


@router.patch("/{tap_id}", operation_id="update_tap", response_model=TapOut, responses=PENDING)
async def update_tap(
    tap_id: str,
    body: TapUpdate,
    response: Response,
    request: Request,
    wait: Wait = None,
) -> TapOut | Response:
    """Change a tap. `bridge: null` detaches it; multi_queue, vnet_hdr and owner can only be
    set at creation in the kernel, so changing them re-creates the tap."""
    ctx, request_id = context(request), request_id_of(request)
    prefixes = await ctx.prefixes_for(body.addresses)
    facts = await ctx.vlan_facts_for(body.vlan)
    row, op = await ctx.mutate(
        lambda s: TapService(s, request_id, facts).update(tap_id, body, prefixes)
    )
    return await _finish(ctx, response, row, op, wait, 200)


@router.post(
    "/{tap_id}/attach", operation_id="attach_tap", response_model=TapOut, responses=PENDING
)
async def attach_tap(
    tap_id: str,
    body: TapAttach,
    response: Response,
    request: Request,
    wait: Wait = None,
) -> TapOut | Response:
    """Attach the tap to a bridge (like `brctl addif`). 409 `in-use` when the tap carries a
    routed network (the problem's `dependents` names it)."""
    ctx, request_id = context(request), request_id_of(request)
    row, op = await ctx.mutate(lambda s: TapService(s, request_id).attach(tap_id, body.bridge))
    return await _finish(ctx, response, row, op, wait, 200)


@router.post(
    "/{tap_id}/detach", operation_id="detach_tap", response_model=TapOut, responses=PENDING
)
async def detach_tap(
    tap_id: str, response: Response, request: Request, wait: Wait = None
) -> TapOut | Response:
    """Detach the tap from its bridge (like `brctl delif`)."""
    ctx, request_id = context(request), request_id_of(request)
    row, op = await ctx.mutate(lambda s: TapService(s, request_id).attach(tap_id, None))
    return await _finish(ctx, response, row, op, wait, 200)


@router.delete(
    "/{tap_id}",
    operation_id="delete_tap",
    status_code=202,
    response_model=TapOut,
    responses={204: {"description": "Deleted (with ?wait=)"}},
    description="409 `in-use` (listing `dependents`) while a VM NIC or a managed network (a "
    "routed tap) uses the tap. With ?force=true the NIC leaves its VM (a running VM is "
    "stopped) and the network is deleted; the operation lists them in `detached`.",
)
async def delete_tap(
    tap_id: str, response: Response, request: Request, wait: Wait = None, force: Force = False
) -> TapOut | Response:
    ctx, request_id = context(request), request_id_of(request)
    row, op = await ctx.mutate(lambda s: TapService(s, request_id).delete(tap_id, force))
    return await _finish(ctx, response, row, op, wait, 202)
