"""/v1/vlans: tenants' L2 segments (IEEE 802.1Q VLANs) on a trunk bridge (issue 10)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.api import trunk_views
from app.api.deps import AppContext, Cursor, Force, Limit, ProjectFilter, Wait, caller_of, context
from app.api.presenters import mutation_headers, vlan_out
from app.api.strict import StrictRoute
from app.api.waiting import settle_response
from app.db.models import Operation, Vlan
from app.db.session import Session
from app.domain.tenancy import Caller
from app.domain.vlans import VlanFacts
from app.schemas.common import PROBLEM_RESPONSES
from app.schemas.links import FdbEntry, PortVlan
from app.schemas.vlans import Vlan as VlanOut
from app.schemas.vlans import VlanCreate, VlanPage, VlanUpdate
from app.services.vlans import VidTakenMeanwhile, VlanService, candidate_names

router = APIRouter(
    prefix="/v1/vlans", tags=["vlans"], responses=PROBLEM_RESPONSES, route_class=StrictRoute
)

SETTLE_DOC = "202: accepted, pending. With ?wait= the answer comes once it settled."
# creates without vlan_id that lost the id they probed the host for to a concurrent create
# choose again this often before the 409 reaches the client
VID_ATTEMPTS = 5


def _views(session: Session, rows: list[Vlan]) -> list[VlanOut]:
    """`rows` may come from another (closed) session: only their columns are read."""
    service = VlanService(session)
    trunks, l3 = service.trunks(rows), service.with_network(rows)
    views = []
    for r in rows:
        views.append(vlan_out(r, trunks.get(r.trunk_id), r.id in l3))
    return views


async def _finish(
    ctx: AppContext,
    response: Response,
    row: Vlan,
    op: Operation | None,
    wait: float | None,
    settled_status: int,
) -> VlanOut | Response:
    result = await settle_response(ctx, response, "vlans", row, op, wait, settled_status)
    if isinstance(result, Response):
        return result
    return (await ctx.read(lambda s: _views(s, [result])))[0]


@router.post(
    "",
    operation_id="create_vlan",
    status_code=202,
    response_model=VlanOut,
    responses={201: {"model": VlanOut, "description": "Created and settled (with ?wait=)"}},
    summary="Create a VLAN on a trunk bridge",
    description="The backend is chosen from what the host's kernel offers (probed, GET "
    "/v1/host/capabilities). 409 `host-lacks-feature` when it cannot carry the VLAN: "
    "`missing_features` names each missing kernel feature (feature, kernel_config, module, "
    "the probe's reason), and nothing is stored. 409 when the VID is taken on the trunk, "
    "the trunk's VLANs use another backend, or the name is taken (without regard to case). "
    "Without `vlan_id` the VLAN gets the lowest free id of the project's `vlan_ranges`; a "
    "member's `vlan_id` must lie in them (403 `vlan-id-outside-ranges`); 409 `over-quota` "
    "beyond the project's `vlans` quota. " + SETTLE_DOC,
)
async def create_vlan(
    body: VlanCreate, response: Response, request: Request, wait: Wait = None
) -> VlanOut | Response:
    ctx, caller = context(request), caller_of(request)
    capabilities = await ctx.host(ctx.inspector.capabilities)
    facts = VlanFacts.from_link_probe(capabilities["links"])
    for attempt in range(1, VID_ATTEMPTS + 1):
        try:
            row, op = await _create_once(ctx, caller, body, facts)
        except VidTakenMeanwhile:
            if attempt == VID_ATTEMPTS:
                raise
        else:
            return await _finish(ctx, response, row, op, wait, 201)
    raise AssertionError("unreachable: the last attempt returns or raises")


async def _create_once(
    ctx: AppContext, caller: Caller, body: VlanCreate, facts: VlanFacts
) -> tuple[Vlan, Operation]:
    """One attempt: the VID (given, or the next free one of the project's ranges now), the
    host asked about its kernel names, then the create's transaction."""
    trunk, uplink = await ctx.read(
        lambda s: VlanService(s, caller).trunk_names(body.trunk, body.project_id)
    )
    vid = body.vlan_id
    if vid is None:
        vid = await ctx.read(lambda s: VlanService(s, caller).next_vid(body.trunk, body.project_id))
    foreign = {
        name: await ctx.host(ctx.inspector.foreign_link, name)
        for name in candidate_names(trunk, vid, uplink)
    }
    return await ctx.mutate(lambda s: VlanService(s, caller).create(body, facts, foreign, vid))


@router.get("", operation_id="list_vlans", response_model=VlanPage)
async def list_vlans(
    request: Request, limit: Limit = 100, cursor: Cursor = None, project: ProjectFilter = None
) -> VlanPage:
    def page(session: Session) -> VlanPage:
        rows, next_cursor = VlanService(session, caller_of(request)).page(limit, cursor, project)
        return VlanPage(items=_views(session, list(rows)), next_cursor=next_cursor)

    return await context(request).read(page)


@router.get("/{vlan_id}", operation_id="get_vlan", response_model=VlanOut)
async def get_vlan(vlan_id: str, request: Request) -> VlanOut:
    """A VLAN by id or name (any case): its backend, trunk, and the kernel objects it owns
    with their observed state."""
    return (
        await context(request).read(
            lambda s: _views(s, [VlanService(s, caller_of(request)).get(vlan_id)])
        )
    )[0]


@router.patch(
    "/{vlan_id}",
    operation_id="update_vlan",
    response_model=VlanOut,
    description="Name and description only; no kernel object changes, so the answer is 200 "
    "at once and the generation stays; a change of either is the event `vlan.updated` "
    "(`data.changed` names the fields). vlan_id, trunk and backend cannot change (422 saying "
    "so). ?wait= is checked like on every PATCH (a bad value is 422) but never waits: "
    "there is nothing to settle.",
)
async def update_vlan(
    vlan_id: str, body: VlanUpdate, response: Response, request: Request, wait: Wait = None
) -> VlanOut:
    ctx, caller = context(request), caller_of(request)
    row, changed = await ctx.mutate(lambda s: VlanService(s, caller).update(vlan_id, body))
    if changed:  # no status moves, so no worker tells /v1/events: the API does
        ctx.bus.publish(**row.event_fields("vlan", "updated", data={"changed": changed}))
    mutation_headers(response, "vlans", row.id, None)
    return (await ctx.read(lambda s: _views(s, [row])))[0]


@router.delete(
    "/{vlan_id}",
    operation_id="delete_vlan",
    status_code=202,
    response_model=VlanOut,
    responses={204: {"description": "Deleted (with ?wait=)"}},
    description="The VLAN's kernel objects are removed, then the VLAN. 409 `in-use` (listing "
    "`dependents`: kind, id, name) while VM NICs (access ports of the VLAN, or trunk NICs "
    "carrying its VID) or taps use it. With ?force=true: those VM NICs leave their VMs (a "
    "running VM is stopped) and the taps leave the VLAN and its trunk (detached, kept); the "
    "operation lists them in `detached`. Deleting its trunk bridge is refused (409 in-use "
    "listing it) unless ?force=true, which deletes it too.",
)
async def delete_vlan(
    vlan_id: str, response: Response, request: Request, wait: Wait = None, force: Force = False
) -> VlanOut | Response:
    ctx, caller = context(request), caller_of(request)
    row, op = await ctx.mutate(lambda s: VlanService(s, caller).delete(vlan_id, force))
    return await _finish(ctx, response, row, op, wait, 202)


@router.get("/{vlan_id}/ports", operation_id="list_vlan_ports", response_model=list[PortVlan])
async def list_vlan_ports(vlan_id: str, request: Request) -> list[PortVlan]:
    """The ports on the VLAN (Neutron: a network's ports), as the kernel has them now, on
    either backend: the rows of GET /v1/bridges/{trunk}/vlans whose `vid` is the VLAN's.
    vlan_filtering: the trunk's ports that are members of the VID (access taps untagged
    with PVID, the uplink and trunk NICs tagged, the bridge's own port while the host has
    an address on the VLAN); bridge_per_vlan: every port of the VLAN's own bridge (`via`),
    the uplink's `<uplink>.<vid>` and the VLAN's taps. [] once the trunk is gone; 404 for an
    unknown VLAN."""
    return await trunk_views.vlan_ports(context(request), caller_of(request), vlan_id)


@router.get("/{vlan_id}/fdb", operation_id="list_vlan_fdb", response_model=list[FdbEntry])
async def list_vlan_fdb(vlan_id: str, request: Request) -> list[FdbEntry]:
    """The VLAN's MAC table, as the kernel has it now, on either backend: the entries of GET
    /v1/bridges/{trunk}/fdb whose `vlan` is the VLAN's VID (vlan_filtering: the trunk's
    entries on that VID; bridge_per_vlan: the table of the VLAN's own bridge, `via`). [] once
    the trunk is gone; 404 for an unknown VLAN."""
    return await trunk_views.vlan_fdb(context(request), caller_of(request), vlan_id)
