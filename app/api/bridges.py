"""/v1/bridges: the how-to's br0, as a resource."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from app.api.deps import AppContext, Cursor, Limit, Wait, context, request_id_of
from app.api.presenters import bridge_out
from app.api.waiting import settle_response
from app.db.models import Bridge, Operation
from app.db.repositories import BridgeRepository
from app.schemas.common import PROBLEM_RESPONSES
from app.schemas.links import Bridge as BridgeOut
from app.schemas.links import BridgeCreate, BridgePage, BridgeUpdate, FdbEntry
from app.services.links import BridgeService

router = APIRouter(prefix="/v1/bridges", tags=["bridges"], responses=PROBLEM_RESPONSES)

SETTLE_DOC = "202: accepted, pending. With ?wait= the answer comes once it settled."


async def _present(ctx: AppContext, row: Bridge) -> BridgeOut:
    ports = await ctx.host(ctx.inspector.bridge_ports, row.name)
    return bridge_out(row, ports)


async def _finish(
    ctx: AppContext,
    response: Response,
    row: Bridge,
    op: Operation | None,
    wait: float | None,
    settled_status: int,
) -> BridgeOut | Response:
    result = await settle_response(
        ctx,
        response,
        "bridges",
        row,
        op,
        wait,
        settled_status,
        lambda s: BridgeRepository(s).get(row.id),
    )
    return result if isinstance(result, Response) else await _present(ctx, result)


@router.post(
    "",
    operation_id="create_bridge",
    status_code=202,
    response_model=BridgeOut,
    responses={201: {"model": BridgeOut, "description": "Created and settled (with ?wait=)"}},
    summary="Create a bridge",
    description=SETTLE_DOC,
)
async def create_bridge(
    body: BridgeCreate, response: Response, request: Request, wait: Wait = None
) -> BridgeOut | Response:
    ctx, request_id = context(request), request_id_of(request)
    row, op = await ctx.mutate(lambda s: BridgeService(s, request_id).create(body))
    return await _finish(ctx, response, row, op, wait, 201)


@router.get("", operation_id="list_bridges", response_model=BridgePage)
async def list_bridges(request: Request, limit: Limit = 100, cursor: Cursor = None) -> BridgePage:
    ctx = context(request)
    rows, next_cursor = await ctx.read(lambda s: BridgeService(s).page(limit, cursor))
    ports = await ctx.host(ctx.inspector.ports_of, [r.name for r in rows])
    return BridgePage(
        items=[bridge_out(r, ports.get(r.name)) for r in rows], next_cursor=next_cursor
    )


@router.get("/{bridge_id}", operation_id="get_bridge", response_model=BridgeOut)
async def get_bridge(bridge_id: str, request: Request) -> BridgeOut:
    ctx = context(request)
    row = await ctx.read(lambda s: BridgeService(s).get(bridge_id))
    return await _present(ctx, row)


@router.patch(
    "/{bridge_id}",
    operation_id="update_bridge",
    response_model=BridgeOut,
    responses={202: {"model": BridgeOut, "description": "Accepted, pending"}},
    description="200 when nothing changed or the change settled within ?wait=; else 202.",
)
async def update_bridge(
    bridge_id: str,
    body: BridgeUpdate,
    response: Response,
    request: Request,
    wait: Wait = None,
) -> BridgeOut | Response:
    ctx, request_id = context(request), request_id_of(request)
    row, op = await ctx.mutate(lambda s: BridgeService(s, request_id).update(bridge_id, body))
    return await _finish(ctx, response, row, op, wait, 200)


@router.delete(
    "/{bridge_id}",
    operation_id="delete_bridge",
    status_code=202,
    response_model=BridgeOut,
    responses={204: {"description": "Deleted (with ?wait=)"}},
    description="409 while taps are attached, unless ?detach_taps=true detaches them first.",
)
async def delete_bridge(
    bridge_id: str,
    response: Response,
    request: Request,
    wait: Wait = None,
    detach_taps: Annotated[bool, Query(description="Detach attached taps first")] = False,
) -> BridgeOut | Response:
    ctx, request_id = context(request), request_id_of(request)
    row, op = await ctx.mutate(
        lambda s: BridgeService(s, request_id).delete(bridge_id, detach_taps)
    )
    return await _finish(ctx, response, row, op, wait, 202)


@router.get("/{bridge_id}/fdb", operation_id="list_bridge_fdb", response_model=list[FdbEntry])
async def list_bridge_fdb(bridge_id: str, request: Request) -> list[FdbEntry]:
    """The bridge's MAC table (like `brctl showmacs`): port, MAC, local flag, ageing timer."""
    ctx = context(request)
    row = await ctx.read(lambda s: BridgeService(s).get(bridge_id))
    entries = await ctx.host(ctx.inspector.fdb, row.name)
    return [FdbEntry(**e) for e in entries]
