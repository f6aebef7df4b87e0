"""/v1/ports: ports (Neutron's port, natively): a tap the daemon makes on a bridge or a
VLAN, a guest MAC and a fixed address served as a static DHCP lease; a VM NIC with the
`port` backend plugs one."""

from __future__ import annotations

import socket
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy.orm import Session

from app.api.deps import AppContext, Cursor, Limit, ProjectFilter, Wait, caller_of, context
from app.api.presenters import port_out
from app.api.strict import StrictRoute
from app.api.waiting import settle_response
from app.db.models import Operation, Port, new_id
from app.domain.ports import port_tap_name
from app.schemas.common import PROBLEM_RESPONSES
from app.schemas.ports import Port as PortOut
from app.schemas.ports import PortCreate, PortPage, PortUpdate
from app.services.network_ports import PortService

router = APIRouter(
    prefix="/v1/ports", tags=["ports"], responses=PROBLEM_RESPONSES, route_class=StrictRoute
)

PENDING: dict[int | str, dict[str, Any]] = {
    202: {"model": PortOut, "description": "Accepted, pending"}
}
NetworkFilter = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=64,
        description="Only the ports on this managed network's segment (its id or name; 404 "
        "for an unknown one)",
    ),
]
DeviceFilter = Annotated[
    str | None,
    Query(max_length=255, description='Only the ports with this device_id ("": unplugged)'),
]


def _present(session: Session, service: PortService, rows: list[Port]) -> list[PortOut]:
    taps, users = service.taps(rows), service.users(rows)
    host = socket.gethostname()
    return [port_out(r, taps.get(r.tap_id), users.get(r.tap_id), host) for r in rows]


async def _out(ctx: AppContext, request: Request, row: Port) -> PortOut:
    def load(session: Session) -> PortOut:
        service = PortService(session, caller_of(request))
        found = session.get(Port, row.id)
        return _present(session, service, [found if found is not None else row])[0]

    return await ctx.read(load)


async def _finish(
    ctx: AppContext,
    request: Request,
    response: Response,
    row: Port,
    op: Operation | None,
    wait: float | None,
    settled_status: int,
) -> PortOut | Response:
    result = await settle_response(ctx, response, "ports", row, op, wait, settled_status)
    return result if isinstance(result, Response) else await _out(ctx, request, result)


@router.post(
    "",
    operation_id="create_port",
    status_code=202,
    response_model=PortOut,
    responses={201: {"model": PortOut, "description": "Created and settled (with ?wait=)"}},
    description="409 when the MAC or the fixed address is taken, the name is taken in the "
    "project, or over the `ports` quota (over-quota); 422 on a segment without a managed "
    "network for `ipv4`.",
)
async def create_port(
    body: PortCreate, response: Response, request: Request, wait: Wait = None
) -> PortOut | Response:
    ctx, caller = context(request), caller_of(request)
    port_id = new_id()
    foreign = await ctx.host(ctx.inspector.foreign_link, port_tap_name(port_id))
    facts = await ctx.vlan_facts_for(body.vlan)
    leases = ctx.inspector.leases
    row, op = await ctx.mutate(
        lambda s: PortService(s, caller, facts, leases).create(body, port_id, foreign)
    )
    return await _finish(ctx, request, response, row, op, wait, 201)


@router.get("", operation_id="list_ports", response_model=PortPage)
async def list_ports(
    request: Request,
    limit: Limit = 100,
    cursor: Cursor = None,
    project: ProjectFilter = None,
    network: NetworkFilter = None,
    device_id: DeviceFilter = None,
) -> PortPage:
    def load(session: Session) -> PortPage:
        service = PortService(session, caller_of(request))
        rows, next_cursor = service.page(limit, cursor, project, network, device_id)
        return PortPage(items=_present(session, service, list(rows)), next_cursor=next_cursor)

    return await context(request).read(load)


@router.get("/{port_id}", operation_id="get_port", response_model=PortOut)
async def get_port(port_id: str, request: Request) -> PortOut:
    def load(session: Session) -> PortOut:
        service = PortService(session, caller_of(request))
        return _present(session, service, [service.get(port_id)])[0]

    return await context(request).read(load)


@router.patch("/{port_id}", operation_id="update_port", response_model=PortOut, responses=PENDING)
async def update_port(
    port_id: str, body: PortUpdate, response: Response, request: Request, wait: Wait = None
) -> PortOut | Response:
    """Change a port's name, description, device_id, device_owner or fixed address (the
    latter only while no VM uses it: 409 otherwise)."""
    ctx, caller = context(request), caller_of(request)
    leases = ctx.inspector.leases
    row, op = await ctx.mutate(
        lambda s: PortService(s, caller, leases=leases).update(port_id, body)
    )
    return await _finish(ctx, request, response, row, op, wait, 200)


@router.delete(
    "/{port_id}",
    operation_id="delete_port",
    status_code=202,
    response_model=PortOut,
    responses={204: {"description": "Deleted (with ?wait=)"}},
    description="409 `in-use` while a VM NIC plugs the port (`dependents` names it): delete "
    "the VM (or its NIC) first. Its tap goes with it.",
)
async def delete_port(
    port_id: str, response: Response, request: Request, wait: Wait = None
) -> PortOut | Response:
    ctx, caller = context(request), caller_of(request)
    row, op = await ctx.mutate(lambda s: PortService(s, caller).delete(port_id))
    return await _finish(ctx, request, response, row, op, wait, 202)
