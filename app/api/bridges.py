"""/v1/bridges: the how-to's br0, as a resource, and its uplink (eth0 in br0)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from app.api import trunk_views
from app.api.deps import (
    AppContext,
    Cursor,
    Force,
    Limit,
    ProjectFilter,
    Wait,
    admin_only,
    caller_of,
    context,
)
from app.api.presenters import (
    bridge_out,
    uplink_out,
    uplink_plan_out,
    uplink_restore_plan_out,
)
from app.api.strict import StrictRoute
from app.api.waiting import settle_response
from app.db.models import Bridge, Operation, Uplink
from app.domain.tenancy import Caller
from app.schemas.common import PROBLEM_RESPONSES
from app.schemas.links import Bridge as BridgeOut
from app.schemas.links import (
    BridgeCreate,
    BridgePage,
    BridgeUpdate,
    BridgeVlans,
    FdbEntry,
)
from app.schemas.uplinks import UplinkOut, UplinkPlan, UplinkSet
from app.services.links import BridgeService, plan_new_link
from app.services.uplinks import UplinkService

router = APIRouter(
    prefix="/v1/bridges", tags=["bridges"], responses=PROBLEM_RESPONSES, route_class=StrictRoute
)

SETTLE_DOC = "202: accepted, pending. With ?wait= the answer comes once it settled."


async def _present(ctx: AppContext, row: Bridge, caller: Caller) -> BridgeOut:
    ports = await trunk_views.ports_of(ctx, [row], caller)
    uplinks = await ctx.read(lambda s: UplinkService(s).of_bridges([row.id]))
    return bridge_out(row, ports[row.id], uplinks.get(row.id))


async def _finish(
    ctx: AppContext,
    response: Response,
    row: Bridge,
    op: Operation | None,
    wait: float | None,
    settled_status: int,
    caller: Caller,
) -> BridgeOut | Response:
    result = await settle_response(ctx, response, "bridges", row, op, wait, settled_status)
    if isinstance(result, Response):
        return result
    return await _present(ctx, result, caller)


@router.post(
    "",
    operation_id="create_bridge",
    status_code=202,
    response_model=BridgeOut,
    responses={201: {"model": BridgeOut, "description": "Created and settled (with ?wait=)"}},
    summary="Create a bridge",
    description="409 when one of `addresses` is a network's gateway, a NIC's fixed address, "
    "another link's address or in another link's network (the problem's `holder` names it), "
    "or in a subnet a foreign interface uses (`interface`, `prefix`); PATCH checks the same. "
    + SETTLE_DOC,
)
async def create_bridge(
    body: BridgeCreate, response: Response, request: Request, wait: Wait = None
) -> BridgeOut | Response:
    ctx, caller = context(request), caller_of(request)
    # the kernel name the new bridge will get (its id and project decide it): a link kvmnetd
    # does not manage may hold that one
    new = await ctx.read(lambda s: plan_new_link(s, caller, "bridge", body.name, body.project_id))
    foreign = await ctx.host(ctx.inspector.foreign_link, new.ifname)
    prefixes = await ctx.prefixes_for(body.addresses)
    row, op = await ctx.mutate(
        lambda s: BridgeService(s, caller).create(body, foreign, prefixes, new)
    )
    return await _finish(ctx, response, row, op, wait, 201, caller)


@router.get("", operation_id="list_bridges", response_model=BridgePage)
async def list_bridges(
    request: Request, limit: Limit = 100, cursor: Cursor = None, project: ProjectFilter = None
) -> BridgePage:
    ctx = context(request)
    rows, next_cursor = await ctx.read(
        lambda s: BridgeService(s, caller_of(request)).page(limit, cursor, project)
    )
    ports = await trunk_views.ports_of(ctx, rows, caller_of(request))
    uplinks = await ctx.read(lambda s: UplinkService(s).of_bridges([r.id for r in rows]))
    return BridgePage(
        items=[bridge_out(r, ports.get(r.id), uplinks.get(r.id)) for r in rows],
        next_cursor=next_cursor,
    )


@router.get("/{bridge_id}", operation_id="get_bridge", response_model=BridgeOut)
async def get_bridge(bridge_id: str, request: Request) -> BridgeOut:
    ctx = context(request)
    caller = caller_of(request)
    row = await ctx.read(lambda s: BridgeService(s, caller).get(bridge_id))
    return await _present(ctx, row, caller)


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
    ctx, caller = context(request), caller_of(request)
    prefixes = await ctx.prefixes_for(body.addresses)
    row, op = await ctx.mutate(lambda s: BridgeService(s, caller).update(bridge_id, body, prefixes))
    return await _finish(ctx, response, row, op, wait, 200, caller)


@router.delete(
    "/{bridge_id}",
    operation_id="delete_bridge",
    status_code=202,
    response_model=BridgeOut,
    responses={204: {"description": "Deleted (with ?wait=)"}},
    description="409 `in-use` (listing `dependents`: kind, id, name) while VM NICs, taps, a "
    "managed network or an uplink use the bridge. With ?force=true: the VM NICs leave their "
    "VMs (a running VM is stopped), the network is deleted, taps are detached, the uplink "
    "moves the host's configuration back first; the operation lists them in `detached`. "
    "?detach_taps=true (deprecated) forces past attached taps only.",
)
async def delete_bridge(
    bridge_id: str,
    response: Response,
    request: Request,
    wait: Wait = None,
    force: Force = False,
    detach_taps: Annotated[
        bool,
        Query(
            description="Deprecated: detach attached taps first (other dependents still "
            "refuse the delete); ?force=true covers every dependent",
            deprecated=True,
        ),
    ] = False,
) -> BridgeOut | Response:
    ctx, caller = context(request), caller_of(request)
    row, op = await ctx.mutate(
        lambda s: BridgeService(s, caller).delete(bridge_id, force, detach_taps)
    )
    return await _finish(ctx, response, row, op, wait, 202, caller)


@router.get("/{bridge_id}/fdb", operation_id="list_bridge_fdb", response_model=list[FdbEntry])
async def list_bridge_fdb(bridge_id: str, request: Request) -> list[FdbEntry]:
    """The bridge's MAC table (like `brctl showmacs` / `bridge fdb show br <bridge>`): port,
    MAC, local flag, ageing timer, and each entry's VLAN on a VLAN-filtering bridge. On a
    trunk whose VLANs use the bridge_per_vlan backend, the tables of the VLANs' own bridges
    follow, each entry naming that bridge (`via`, like `br0v20`) and its VLAN; such a bridge
    is no bridge resource (GET /v1/bridges/br0v20 is 404 naming its VLAN)."""
    ctx = context(request)
    row = await ctx.read(lambda s: BridgeService(s, caller_of(request)).get(bridge_id))
    return await trunk_views.fdb(ctx, row)


@router.get("/{bridge_id}/vlans", operation_id="list_bridge_vlans", response_model=BridgeVlans)
async def list_bridge_vlans(bridge_id: str, request: Request) -> BridgeVlans:
    """Per-port VLAN membership (like `bridge -j vlan show`): port, VLAN id, PVID and
    untagged flags, and whether kvmnetd plans the port and wants the membership. On a
    trunk whose VLANs use the bridge_per_vlan backend, every port of each VLAN's own bridge
    follows with that VLAN's VID, untagged (`via` names the bridge). On a kernel without
    bridge VLAN filtering: `filtering_available` false and the reason (not an error), and
    only those per-VLAN ports."""
    ctx = context(request)
    row = await ctx.read(lambda s: BridgeService(s, caller_of(request)).get(bridge_id))
    return await trunk_views.vlans(ctx, row)


# ---- the uplink (the how-to's eth0 in br0) --------------------------------------------------

DryRun = Annotated[bool, Query(description="Only report the planned steps; change nothing")]


async def _uplink_out(ctx: AppContext, row: Uplink) -> UplinkOut:
    live = await ctx.host(ctx.inspector.uplink_view, row.name, row.permanent_mac)
    return uplink_out(row, live)


@router.get("/{bridge_id}/uplink", operation_id="get_bridge_uplink", response_model=UplinkOut)
async def get_bridge_uplink(bridge_id: str, request: Request) -> UplinkOut:
    """The bridge's uplink: its NIC, carrier, the moved configuration and the last steps."""
    ctx = context(request)
    _, row = await ctx.read(lambda s: UplinkService(s, caller_of(request)).get(bridge_id))
    return await _uplink_out(ctx, row)


@router.put(
    "/{bridge_id}/uplink",
    operation_id="set_bridge_uplink",
    dependencies=[Depends(admin_only)],
    status_code=202,
    response_model=UplinkOut | UplinkPlan,
    responses={
        200: {"model": UplinkPlan, "description": "With ?dry_run=true: the plan"},
        201: {"model": UplinkOut, "description": "Attached (with ?wait=)"},
    },
    summary="Enslave a host NIC and move the host's IP configuration onto the bridge",
    description="Addresses (flags, lifetimes) and every route through the NIC move to the "
    "bridge in an order that keeps the host reachable; the bridge takes the NIC's MAC. Then "
    "the gateway (or probe_address) must answer through the bridge, else everything is "
    "rolled back and the uplink reports why. A NIC whose address a DHCP client manages is "
    "refused unless dhcp=move. On a trunk with bridge_per_vlan VLANs the NIC also gets each "
    "VLAN's 802.1Q link `<interface>.<vid>` (removed with the uplink): 409 `name-taken` when "
    "a host link kvmnetd does not manage, or another resource, holds such a name. " + SETTLE_DOC,
)
async def set_bridge_uplink(
    bridge_id: str,
    body: UplinkSet,
    response: Response,
    request: Request,
    wait: Wait = None,
    dry_run: DryRun = False,
) -> UplinkOut | UplinkPlan | Response:
    ctx, caller = context(request), caller_of(request)
    if dry_run:
        bridge = await ctx.read(
            lambda s: UplinkService(s, caller_of(request)).check(bridge_id, body)
        )
        take_mac = body.take_mac and not bridge.mac  # a pinned bridge MAC stays
        plan = await ctx.host(
            ctx.inspector.uplink_plan, body.interface, bridge.ifname, take_mac, body.dhcp
        )
        response.status_code = 200
        return uplink_plan_out(plan, body.interface, bridge.ifname, body.probe_address)
    # a trunk's bridge_per_vlan VLANs get `<interface>.<vid>`: no foreign link may hold it
    names = await ctx.read(
        lambda s: UplinkService(s, caller_of(request)).subinterface_names(bridge_id, body.interface)
    )
    foreign = {name: await ctx.host(ctx.inspector.foreign_link, name) for name in names}
    row, op = await ctx.mutate(lambda s: UplinkService(s, caller).set(bridge_id, body, foreign))
    return await _finish_uplink(ctx, response, row, op, wait, 201)


@router.delete(
    "/{bridge_id}/uplink",
    operation_id="delete_bridge_uplink",
    dependencies=[Depends(admin_only)],
    status_code=202,
    response_model=UplinkOut | UplinkPlan,
    responses={
        200: {"model": UplinkPlan, "description": "With ?dry_run=true: the plan"},
        204: {"description": "Detached (with ?wait=)"},
    },
    summary="Move the host's IP configuration back onto the NIC and release it",
)
async def delete_bridge_uplink(
    bridge_id: str,
    response: Response,
    request: Request,
    wait: Wait = None,
    dry_run: DryRun = False,
) -> UplinkOut | UplinkPlan | Response:
    ctx, caller = context(request), caller_of(request)
    if dry_run:
        bridge, row = await ctx.read(lambda s: UplinkService(s, caller_of(request)).get(bridge_id))
        response.status_code = 200
        return uplink_restore_plan_out(row, bridge.ifname)
    row, op = await ctx.mutate(lambda s: UplinkService(s, caller).delete(bridge_id))
    return await _finish_uplink(ctx, response, row, op, wait, 202)


async def _finish_uplink(
    ctx: AppContext,
    response: Response,
    row: Uplink,
    op: Operation | None,
    wait: float | None,
    settled_status: int,
) -> UplinkOut | Response:
    result = await settle_response(ctx, response, "bridges", row, op, wait, settled_status)
    location = f"/v1/bridges/{row.bridge_id}/uplink"
    if isinstance(result, Response):
        result.headers["Location"] = location
        return result
    response.headers["Location"] = location
    return await _uplink_out(ctx, result)
