"""/v1/networks (managed NAT networks with DHCP/DNS) and /v1/port-forwards."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from sqlalchemy.orm import Session

from app.api.deps import AppContext, Cursor, Limit, Wait, context, request_id_of
from app.api.presenters import mutation_headers, network_out, port_forward_out
from app.api.waiting import settle_response
from app.db.models import Network, Operation, PortForward
from app.db.repositories import NetworkRepository, PortForwardRepository
from app.schemas.common import PROBLEM_RESPONSES
from app.schemas.networks import (
    Lease,
    NetworkCreate,
    NetworkPage,
    NetworkUpdate,
    PortForwardBatch,
    PortForwardCreate,
    PortForwardList,
    PortForwardPage,
)
from app.schemas.networks import Network as NetworkOut
from app.schemas.networks import PortForward as PortForwardOut
from app.services.networks import NetworkService, PortForwardService

router = APIRouter(tags=["networks"], responses=PROBLEM_RESPONSES)

SETTLE_DOC = "202: accepted, pending. With ?wait= the answer comes once it settled."


def _network_view(session: Session, row: Network) -> NetworkOut:
    """`row` may come from another (closed) session: only its columns are read."""
    link = NetworkService(session).link_of(row)
    return network_out(row, link.name if link is not None else None)


def _forward_view(session: Session, row: PortForward) -> PortForwardOut:
    return port_forward_out(row, PortForwardService(session).target(row))


async def _finish_network(
    ctx: AppContext,
    response: Response,
    row: Network,
    op: Operation | None,
    wait: float | None,
    settled_status: int,
) -> NetworkOut | Response:
    result = await settle_response(
        ctx,
        response,
        "networks",
        row,
        op,
        wait,
        settled_status,
        lambda s: NetworkRepository(s).get(row.id),
    )
    if isinstance(result, Response):
        return result
    return await ctx.read(lambda s: _network_view(s, result))


async def _finish_forward(
    ctx: AppContext,
    response: Response,
    row: PortForward,
    op: Operation | None,
    wait: float | None,
    settled_status: int,
) -> PortForwardOut | Response:
    result = await settle_response(
        ctx,
        response,
        "port-forwards",
        row,
        op,
        wait,
        settled_status,
        lambda s: PortForwardRepository(s).get(row.id),
    )
    if isinstance(result, Response):
        return result
    return await ctx.read(lambda s: _forward_view(s, result))


# ---- networks -------------------------------------------------------------------------------


@router.post(
    "/v1/networks",
    operation_id="create_network",
    status_code=202,
    response_model=NetworkOut,
    responses={201: {"model": NetworkOut, "description": "Created and settled (with ?wait=)"}},
    summary="Create a managed network on a bridge or routed tap",
    description="The link gets the gateway address; dnsmasq serves DHCP and DNS there; with "
    "NAT the subnet is masqueraded. VM NICs on the link get fixed addresses. " + SETTLE_DOC,
)
async def create_network(
    body: NetworkCreate, response: Response, request: Request, wait: Wait = None
) -> NetworkOut | Response:
    ctx, request_id = context(request), request_id_of(request)
    row, op = await ctx.mutate(lambda s: NetworkService(s, request_id).create(body))
    return await _finish_network(ctx, response, row, op, wait, 201)


@router.get("/v1/networks", operation_id="list_networks", response_model=NetworkPage)
async def list_networks(request: Request, limit: Limit = 100, cursor: Cursor = None) -> NetworkPage:
    def page(session: Session) -> NetworkPage:
        rows, next_cursor = NetworkService(session).page(limit, cursor)
        return NetworkPage(items=[_network_view(session, r) for r in rows], next_cursor=next_cursor)

    return await context(request).read(page)


@router.get("/v1/networks/{network_id}", operation_id="get_network", response_model=NetworkOut)
async def get_network(network_id: str, request: Request) -> NetworkOut:
    return await context(request).read(
        lambda s: _network_view(s, NetworkService(s).get(network_id))
    )


@router.patch(
    "/v1/networks/{network_id}",
    operation_id="update_network",
    response_model=NetworkOut,
    responses={202: {"model": NetworkOut, "description": "Accepted, pending"}},
    description="NAT, DHCP range and lease time, DNS domain. A change of static leases never "
    "restarts dnsmasq; other changes restart it and keep the leases. "
    "200 when nothing changed or the change settled within ?wait=; else 202.",
)
async def update_network(
    network_id: str, body: NetworkUpdate, response: Response, request: Request, wait: Wait = None
) -> NetworkOut | Response:
    ctx, request_id = context(request), request_id_of(request)
    row, op = await ctx.mutate(lambda s: NetworkService(s, request_id).update(network_id, body))
    return await _finish_network(ctx, response, row, op, wait, 200)


@router.delete(
    "/v1/networks/{network_id}",
    operation_id="delete_network",
    status_code=202,
    response_model=NetworkOut,
    responses={204: {"description": "Deleted (with ?wait=)"}},
    description="409 while port forwards use it. Stops its dnsmasq, removes its rules and the "
    "gateway address; the last network takes our nftables table with it.",
)
async def delete_network(
    network_id: str, response: Response, request: Request, wait: Wait = None
) -> NetworkOut | Response:
    ctx, request_id = context(request), request_id_of(request)
    row, op = await ctx.mutate(lambda s: NetworkService(s, request_id).delete(network_id))
    return await _finish_network(ctx, response, row, op, wait, 202)


@router.get(
    "/v1/networks/{network_id}/leases",
    operation_id="list_network_leases",
    response_model=list[Lease],
)
async def list_network_leases(network_id: str, request: Request) -> list[Lease]:
    """Active DHCP leases from the network's dnsmasq, with the VM each MAC belongs to."""
    ctx = context(request)

    def load(session: Session) -> tuple[str, dict[str, str]]:
        row = NetworkService(session).get(network_id)
        nics = NetworkRepository(session).nics(row.id)
        return row.id, {n.mac: n.vm_id for n in nics}

    row_id, vm_by_mac = await ctx.read(load)
    leases = await ctx.host(ctx.inspector.leases, row_id)
    return [
        Lease(
            mac=lease["mac"],
            ip=lease["address"],
            hostname=lease["hostname"],
            expires_at=lease["expires_at"],
            vm_id=vm_by_mac.get(lease["mac"]),
            fixed=lease["mac"] in vm_by_mac,
        )
        for lease in leases
    ]


# ---- port forwards --------------------------------------------------------------------------


@router.post(
    "/v1/port-forwards",
    operation_id="create_port_forward",
    status_code=202,
    response_model=PortForwardOut,
    responses={201: {"model": PortForwardOut, "description": "Created and settled (?wait=)"}},
    tags=["port-forwards"],
    summary="Forward host port(s) to a VM NIC on a managed network",
    description="Clashes with another forward or a VM's user-networking forward: 409. "
    + SETTLE_DOC,
)
async def create_port_forward(
    body: PortForwardCreate, response: Response, request: Request, wait: Wait = None
) -> PortForwardOut | Response:
    ctx, request_id = context(request), request_id_of(request)
    row, op = await ctx.mutate(lambda s: PortForwardService(s, request_id).create(body))
    return await _finish_forward(ctx, response, row, op, wait, 201)


@router.post(
    "/v1/port-forwards/batch",
    operation_id="create_port_forwards",
    status_code=202,
    response_model=PortForwardList,
    tags=["port-forwards"],
    summary="Create many port forwards in one transaction",
    description="All or none: the first invalid item is reported (its index in `index`). "
    "They are applied together in one nftables transaction. Each has its own operation.",
)
async def create_port_forwards(body: PortForwardBatch, request: Request) -> PortForwardList:
    ctx, request_id = context(request), request_id_of(request)

    def create(session: Session) -> PortForwardList:
        created = PortForwardService(session, request_id).create_many(body.port_forwards)
        session.flush()
        return PortForwardList(items=[_forward_view(session, row) for row, _ in created])

    result = await ctx.mutate(create)
    ctx.nudger.nudge()
    return result


@router.get(
    "/v1/port-forwards",
    operation_id="list_port_forwards",
    response_model=PortForwardPage,
    tags=["port-forwards"],
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
    "/v1/port-forwards/{forward_id}",
    operation_id="get_port_forward",
    response_model=PortForwardOut,
    tags=["port-forwards"],
)
async def get_port_forward(forward_id: str, request: Request) -> PortForwardOut:
    return await context(request).read(
        lambda s: _forward_view(s, PortForwardService(s).get(forward_id))
    )


@router.delete(
    "/v1/port-forwards/{forward_id}",
    operation_id="delete_port_forward",
    status_code=202,
    response_model=PortForwardOut,
    responses={204: {"description": "Deleted (with ?wait=)"}},
    tags=["port-forwards"],
)
async def delete_port_forward(
    forward_id: str, response: Response, request: Request, wait: Wait = None
) -> PortForwardOut | Response:
    ctx, request_id = context(request), request_id_of(request)
    row, op = await ctx.mutate(lambda s: PortForwardService(s, request_id).delete(forward_id))
    if op is None and row.deleted:
        mutation_headers(response, "port-forwards", row.id, None)
    return await _finish_forward(ctx, response, row, op, wait, 202)
