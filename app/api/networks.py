"""/v1/networks: managed NAT networks with DHCP and DNS by dnsmasq."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import PlainTextResponse
from sqlalchemy.orm import Session

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
from app.api.presenters import network_out
from app.api.strict import StrictRoute
from app.api.waiting import settle_response
from app.db.models import Network, Operation
from app.schemas.common import PROBLEM_RESPONSES
from app.schemas.networks import (
    Lease,
    NetworkCreate,
    NetworkPage,
    NetworkUpdate,
)
from app.schemas.networks import Network as NetworkOut
from app.services.networks import NetworkService

router = APIRouter(
    prefix="/v1/networks", tags=["networks"], responses=PROBLEM_RESPONSES, route_class=StrictRoute
)

SETTLE_DOC = "202: accepted, pending. With ?wait= the answer comes once it settled."


def _network_view(session: Session, row: Network) -> NetworkOut:
    """`row` may come from another (closed) session: only its columns are read."""
    return network_out(row, NetworkService(session).link_name(row))


async def _finish_network(
    ctx: AppContext,
    response: Response,
    row: Network,
    op: Operation | None,
    wait: float | None,
    settled_status: int,
) -> NetworkOut | Response:
    result = await settle_response(ctx, response, "networks", row, op, wait, settled_status)
    if isinstance(result, Response):
        return result
    return await ctx.read(lambda s: _network_view(s, result))


# ---- networks -------------------------------------------------------------------------------


@router.post(
    "",
    operation_id="create_network",
    status_code=202,
    response_model=NetworkOut,
    responses={201: {"model": NetworkOut, "description": "Created and settled (with ?wait=)"}},
    summary="Create a managed network on a bridge or routed tap",
    description="The link gets the gateway address; dnsmasq serves DHCP and DNS there; with "
    "NAT the subnet is masqueraded. VM NICs on the link get fixed addresses. 409 when the "
    "subnet overlaps another network's, or an address or connected route of a host interface "
    "that is not kvmnetd's (the problem names the `interface` and `prefix`). " + SETTLE_DOC,
)
async def create_network(
    body: NetworkCreate, response: Response, request: Request, wait: Wait = None
) -> NetworkOut | Response:
    ctx, request_id, principal = context(request), request_id_of(request), principal_of(request)
    prefixes = await ctx.host(ctx.inspector.host_prefixes)
    facts = await ctx.vlan_facts_for(body.vlan)
    row, op = await ctx.mutate(
        lambda s: NetworkService(s, request_id, facts).create(body, prefixes, principal)
    )
    return await _finish_network(ctx, response, row, op, wait, 201)


@router.get("", operation_id="list_networks", response_model=NetworkPage)
async def list_networks(request: Request, limit: Limit = 100, cursor: Cursor = None) -> NetworkPage:
    def page(session: Session) -> NetworkPage:
        rows, next_cursor = NetworkService(session).page(limit, cursor)
        return NetworkPage(items=[_network_view(session, r) for r in rows], next_cursor=next_cursor)

    return await context(request).read(page)


@router.get("/{network_id}", operation_id="get_network", response_model=NetworkOut)
async def get_network(network_id: str, request: Request) -> NetworkOut:
    return await context(request).read(
        lambda s: _network_view(s, NetworkService(s).get(network_id))
    )


@router.patch(
    "/{network_id}",
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
    "/{network_id}",
    operation_id="delete_network",
    status_code=202,
    response_model=NetworkOut,
    responses={204: {"description": "Deleted (with ?wait=)"}},
    description="409 `in-use` (listing `dependents`) while VM NICs have fixed addresses on it "
    "or port forwards use it. With ?force=true the forwards are deleted and the NICs stay on "
    "their link without a fixed address; the operation lists them in `detached`. Stops its "
    "dnsmasq, removes its rules and the gateway address; the last network takes our "
    "nftables table with it.",
)
async def delete_network(
    network_id: str,
    response: Response,
    request: Request,
    wait: Wait = None,
    force: Force = False,
) -> NetworkOut | Response:
    ctx, request_id = context(request), request_id_of(request)
    row, op = await ctx.mutate(lambda s: NetworkService(s, request_id).delete(network_id, force))
    return await _finish_network(ctx, response, row, op, wait, 202)


@router.get(
    "/{network_id}/leases",
    operation_id="list_network_leases",
    response_model=list[Lease],
)
async def list_network_leases(network_id: str, request: Request) -> list[Lease]:
    """Active DHCP leases from the network's dnsmasq, with the VM each MAC belongs to;
    `fixed` is true only for a NIC's own fixed address (its MAC holds that address)."""
    ctx = context(request)

    def load(session: Session) -> tuple[str, dict[str, tuple[str, str | None]]]:
        service = NetworkService(session)
        row = service.get(network_id)
        nics = service.nics(row.id)
        return row.id, {n.mac: (n.vm_id, n.ipv4) for n in nics}

    row_id, nic_by_mac = await ctx.read(load)
    leases = await ctx.host(ctx.inspector.leases, row_id)
    return [
        Lease(
            mac=lease["mac"],
            ip=lease["address"],
            hostname=lease["hostname"],
            expires_at=lease["expires_at"],
            vm_id=nic_by_mac[lease["mac"]][0] if lease["mac"] in nic_by_mac else None,
            fixed=nic_by_mac.get(lease["mac"], (None, None))[1] == lease["address"],
        )
        for lease in leases
    ]


@router.get(
    "/{network_id}/log",
    operation_id="get_network_log",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def get_network_log(
    network_id: str,
    request: Request,
    lines: Annotated[int, Query(ge=1, le=10000, description="How many last lines")] = 200,
) -> PlainTextResponse:
    """What the network's dnsmasq printed (start-up, DHCP transactions, errors), newest last."""
    ctx = context(request)
    row_id = await ctx.read(lambda s: NetworkService(s).get(network_id).id)
    return PlainTextResponse(await ctx.host(ctx.inspector.network_log, row_id, lines))
