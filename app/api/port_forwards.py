"""/v1/port-forwards: host ports forwarded (DNAT) to VM NICs on managed networks."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from sqlalchemy.orm import Session

from app.api.deps import AppContext, Cursor, Limit, Wait, context, principal_of, request_id_of
from app.api.presenters import port_forward_out
from app.api.strict import StrictRoute
from app.api.waiting import settle_response
from app.db.models import Operation, PortForward
from app.schemas.common import PROBLEM_RESPONSES
from app.schemas.networks import PortForward as PortForwardOut
from app.schemas.networks import (
    PortForwardBatch,
    PortForwardCreate,
    PortForwardList,
    PortForwardPage,
)
from app.services.networks import PortForwardService

router = APIRouter(
    prefix="/v1/port-forwards",
    tags=["port-forwards"],
    responses=PROBLEM_RESPONSES,
    route_class=StrictRoute,
)

SETTLE_DOC = "202: accepted, pending. With ?wait= the answer comes once it settled."


def _forward_view(session: Session, row: PortForward) -> PortForwardOut:
    return port_forward_out(row, PortForwardService(session).target(row))


async def _finish_forward(
    ctx: AppContext,
    response: Response,
    row: PortForward,
    op: Operation | None,
    wait: float | None,
    settled_status: int,
) -> PortForwardOut | Response:
    result = await settle_response(ctx, response, "port-forwards", row, op, wait, settled_status)
    if isinstance(result, Response):
        return result
    return await ctx.read(lambda s: _forward_view(s, result))


@router.post(
    "",
    operation_id="create_port_forward",
    status_code=202,
    response_model=PortForwardOut,
    responses={201: {"model": PortForwardOut, "description": "Created and settled (?wait=)"}},
    summary="Forward host port(s) to a VM NIC on a managed network",
    description="Clashes with another forward or a VM's user-networking forward: 409. "
    + SETTLE_DOC,
)
async def create_port_forward(
    body: PortForwardCreate, response: Response, request: Request, wait: Wait = None
) -> PortForwardOut | Response:
    ctx, request_id, principal = context(request), request_id_of(request), principal_of(request)
    row, op = await ctx.mutate(lambda s: PortForwardService(s, request_id).create(body, principal))
    return await _finish_forward(ctx, response, row, op, wait, 201)


@router.post(
    "/batch",
    operation_id="create_port_forwards",
    status_code=202,
    response_model=PortForwardList,
    summary="Create many port forwards in one transaction",
    description="All or none: the first invalid item is reported (its index in `index`). "
    "They are applied together in one nftables transaction. Each has its own operation.",
)
async def create_port_forwards(body: PortForwardBatch, request: Request) -> PortForwardList:
    ctx, request_id, principal = context(request), request_id_of(request), principal_of(request)

    def create(session: Session) -> tuple[PortForwardList, list[dict[str, object]]]:
        service = PortForwardService(session, request_id)
        created = service.create_many(body.port_forwards, principal)
        session.flush()
        views = PortForwardList(items=[_forward_view(session, row) for row, _ in created])
        return views, [row.event_fields("port_forward") for row, _ in created]

    result, events = await ctx.mutate(create)
    for event in events:  # each one's transition to pending, before the worker's to active
        ctx.bus.publish(**event)
    ctx.nudger.nudge("port_forward")
    return result


@router.get(
    "",
    operation_id="list_port_forwards",
    response_model=PortForwardPage,
)
async def list_port_forwards(
    request: Request, limit: Limit = 100, cursor: Cursor = None
) -> PortForwardPage:
    def page(session: Session) -> PortForwardPage:
        rows, next_cursor = PortForwardService(session).page(limit, cursor)
        return PortForwardPage(
            items=[_forward_view(session, r) for r in rows], next_cursor=next_cursor
        )

    return await context(request).read(page)


@router.get(
    "/{forward_id}",
    operation_id="get_port_forward",
    response_model=PortForwardOut,
)
async def get_port_forward(forward_id: str, request: Request) -> PortForwardOut:
    return await context(request).read(
        lambda s: _forward_view(s, PortForwardService(s).get(forward_id))
    )


@router.delete(
    "/{forward_id}",
    operation_id="delete_port_forward",
    status_code=202,
    response_model=PortForwardOut,
    responses={204: {"description": "Deleted (with ?wait=)"}},
)
async def delete_port_forward(
    forward_id: str, response: Response, request: Request, wait: Wait = None
) -> PortForwardOut | Response:
    ctx, request_id = context(request), request_id_of(request)
    row, op = await ctx.mutate(lambda s: PortForwardService(s, request_id).delete(forward_id))
    return await _finish_forward(ctx, response, row, op, wait, 202)
