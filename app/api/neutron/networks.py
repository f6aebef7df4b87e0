"""/networking/v2.0/networks: Neutron networks, each one of our L2 segments (a bridge or a
VLAN; mapping: app.services.neutron.networks). Lists go through the collection engine
(app.api.neutron.query); writes through the native services."""

from __future__ import annotations

from fastapi import Request, Response
from starlette.responses import JSONResponse

from app.api.deps import caller_of, context
from app.api.neutron.common import listing, neutron_router, revision, settle, shown
from app.api.neutron.query import Collection, Kind
from app.db.session import Session
from app.domain.neutron import NeutronConfig
from app.domain.tenancy import Caller
from app.domain.vlans import VlanFacts
from app.schemas.neutron import (
    NeutronNetworkCreateRequest,
    NeutronNetworkEnvelope,
    NeutronNetworksEnvelope,
    NeutronNetworkUpdateRequest,
)
from app.services.neutron.networks import NeutronNetworks
from app.services.neutron.tags import Locate

NETWORKS = Collection(
    "networks",
    "network",
    {
        "id": Kind.STR,
        "name": Kind.STR,
        "description": Kind.STR,
        "status": Kind.STR,
        "admin_state_up": Kind.BOOL,
        "shared": Kind.BOOL,
        "subnets": Kind.LIST,
        "mtu": Kind.INT,
        "project_id": Kind.STR,
        "tenant_id": Kind.STR,
        "revision_number": Kind.INT,
        "created_at": Kind.TIME,
        "updated_at": Kind.TIME,
        "router:external": Kind.BOOL,
        "port_security_enabled": Kind.BOOL,
        "provider:network_type": Kind.STR,
        "provider:physical_network": Kind.STR,
        "provider:segmentation_id": Kind.INT,
    },
    extensions=("provider", "network-mtu", "net-mtu-writable"),
)

router = neutron_router("networks")


def networks(session: Session, caller: Caller, config: NeutronConfig) -> NeutronNetworks:
    return NeutronNetworks(session, caller, config)


def locate(session: Session, caller: Caller, config: NeutronConfig) -> Locate:
    """For the tag routes: a network's row by id (app.services.neutron.tags.Locate)."""
    return networks(session, caller, config).locate


@router.get(
    "",
    operation_id="neutron_list_networks",
    response_model=NeutronNetworksEnvelope,
    description="Filters: any top-level attribute (repeat = OR), tags, tags-any, not-tags, "
    "not-tags-any; fields; limit, marker, page_reverse (networks_links); sort_key, sort_dir.",
)
async def list_networks(request: Request) -> JSONResponse:
    ctx, caller = context(request), caller_of(request)
    rows = await ctx.read(lambda s: networks(s, caller, ctx.neutron).views())
    return listing(request, NETWORKS, rows)


@router.get(
    "/{network_id}", operation_id="neutron_get_network", response_model=NeutronNetworkEnvelope
)
async def get_network(network_id: str, request: Request) -> JSONResponse:
    ctx, caller = context(request), caller_of(request)
    view = await ctx.read(lambda s: networks(s, caller, ctx.neutron).view(network_id))
    return JSONResponse({"network": shown(request, view)})


@router.post(
    "",
    operation_id="neutron_create_network",
    status_code=201,
    response_model=NeutronNetworkEnvelope,
    description="Without provider attributes: settings tenant_network_type (a `local` "
    "network is a bridge whose kernel name is brq + 11 hex digits of its id). flat: the "
    "physnet's bridge itself (409 FlatNetworkInUse when it exists). vlan: a VLAN on the "
    "physnet's bridge; 400 on a host whose kernel carries no VLANs.",
)
async def create_network(body: NeutronNetworkCreateRequest, request: Request) -> JSONResponse:
    ctx, caller = context(request), caller_of(request)
    capabilities = await ctx.host(ctx.inspector.capabilities)
    facts = VlanFacts.from_link_probe(capabilities["links"])
    wanted = body.network
    plan = await ctx.read(lambda s: networks(s, caller, ctx.neutron).plan_create(wanted, facts))
    foreign = None
    if plan.new is not None:
        foreign = await ctx.host(ctx.inspector.foreign_link, plan.new.ifname)
    row, op = await ctx.mutate(
        lambda s: networks(s, caller, ctx.neutron).create(plan, wanted, foreign, facts)
    )
    await settle(ctx, row, op)
    view = await ctx.read(lambda s: networks(s, caller, ctx.neutron).view(row.id))
    return JSONResponse({"network": view}, status_code=201)


@router.put(
    "/{network_id}",
    operation_id="neutron_update_network",
    response_model=NeutronNetworkEnvelope,
    description="name, description (vlan networks), shared (admin), admin_state_up (true "
    "only). If-Match: revision_number=N: 412 when the network is at another revision.",
)
async def update_network(
    network_id: str, body: NeutronNetworkUpdateRequest, request: Request
) -> JSONResponse:
    ctx, caller = context(request), caller_of(request)
    expected = revision(request)
    row, op = await ctx.mutate(
        lambda s: networks(s, caller, ctx.neutron).update(network_id, body.network, expected)
    )
    await settle(ctx, row, op)
    view = await ctx.read(lambda s: networks(s, caller, ctx.neutron).view(row.id))
    return JSONResponse({"network": view})


@router.delete(
    "/{network_id}",
    operation_id="neutron_delete_network",
    status_code=204,
    description="Takes its subnet with it. 409 NetworkInUse naming what uses it (VM NICs, "
    "taps, ports, fixed IPs of its subnet): nothing is deleted then. If-Match: "
    "revision_number=N: 412 when the network is at another revision. Answers once the "
    "network and its subnet are gone (or after 5 s each).",
)
async def delete_network(network_id: str, request: Request) -> Response:
    ctx, caller = context(request), caller_of(request)
    expected = revision(request)
    deleted = await ctx.mutate(
        lambda s: networks(s, caller, ctx.neutron).delete(network_id, expected)
    )
    for row, op in deleted:  # its subnet, then the segment: gone (or waited for) at 204
        await settle(ctx, row, op)
    return Response(status_code=204)
