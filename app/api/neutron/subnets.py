"""/networking/v2.0/subnets: Neutron subnets, each one of our managed networks on a bridge or
VLAN (mapping: app.services.neutron.subnets; rows: app.services.neutron.subnet_service).
Lists go through the collection engine; writes through the native NetworkService.

Creates and updates answer as soon as the rows are committed (the workers are nudged, not
waited for): a subnet's address, dnsmasq and options follow within the workers' next pass,
and nothing a Neutron client does next (a port with a fixed IP on it, a show) depends on the
kernel yet. A delete waits (up to 5 s) for the subnet to be gone, so that its name and CIDR
are free when the 204 comes (a client replacing a subnet creates the same one next).
"""

from __future__ import annotations

from fastapi import Request, Response
from starlette.responses import JSONResponse

from app.api.deps import caller_of, context
from app.api.neutron.common import listing, neutron_router, revision, settle, shown
from app.api.neutron.query import Collection, Kind
from app.db.models import Vlan
from app.db.session import Session
from app.domain.neutron import NeutronConfig
from app.domain.tenancy import Caller
from app.domain.vlans import VlanFacts
from app.schemas.neutron import (
    NeutronSubnetCreateRequest,
    NeutronSubnetEnvelope,
    NeutronSubnetsEnvelope,
    NeutronSubnetUpdateRequest,
)
from app.services.neutron.subnet_service import NeutronSubnets
from app.services.neutron.tags import Locate

SUBNETS = Collection(
    "subnets",
    "subnet",
    {
        "id": Kind.STR,
        "name": Kind.STR,
        "description": Kind.STR,
        "network_id": Kind.STR,
        "cidr": Kind.STR,
        "gateway_ip": Kind.STR,
        "ip_version": Kind.INT,
        "enable_dhcp": Kind.BOOL,
        "dns_nameservers": Kind.LIST,
        "project_id": Kind.STR,
        "tenant_id": Kind.STR,
        "ipv6_ra_mode": Kind.STR,
        "ipv6_address_mode": Kind.STR,
        "subnetpool_id": Kind.STR,
        "segment_id": Kind.STR,
        "revision_number": Kind.INT,
        "created_at": Kind.TIME,
        "updated_at": Kind.TIME,
    },
)

router = neutron_router("subnets")


def subnets(session: Session, caller: Caller, config: NeutronConfig) -> NeutronSubnets:
    return NeutronSubnets(session, caller, config)


def locate(session: Session, caller: Caller, config: NeutronConfig) -> Locate:
    """For the tag routes: a subnet's row by id (app.services.neutron.tags.Locate)."""
    return subnets(session, caller, config).locate


@router.get(
    "",
    operation_id="neutron_list_subnets",
    response_model=NeutronSubnetsEnvelope,
    description="Filters: any top-level attribute (repeat = OR), tags, tags-any, not-tags, "
    "not-tags-any; fields; limit, marker, page_reverse (subnets_links); sort_key, sort_dir.",
)
async def list_subnets(request: Request) -> JSONResponse:
    ctx, caller = context(request), caller_of(request)
    rows = await ctx.read(lambda s: subnets(s, caller, ctx.neutron).views())
    return listing(request, SUBNETS, rows)


@router.get("/{subnet_id}", operation_id="neutron_get_subnet", response_model=NeutronSubnetEnvelope)
async def get_subnet(subnet_id: str, request: Request) -> JSONResponse:
    ctx, caller = context(request), caller_of(request)
    view = await ctx.read(lambda s: subnets(s, caller, ctx.neutron).view(subnet_id))
    return JSONResponse({"subnet": shown(request, view)})


@router.post(
    "",
    operation_id="neutron_create_subnet",
    status_code=201,
    response_model=NeutronSubnetEnvelope,
    description="A managed network on the network (bridge or VLAN) network_id names: its "
    "gateway becomes the host's address there, dnsmasq serves the pool (nat false). One "
    "subnet per network (a second: 409); 409 OverQuota over the project's `networks` quota "
    "(Neutron's `subnet`). Answers once the rows are written (the host follows).",
)
async def create_subnet(body: NeutronSubnetCreateRequest, request: Request) -> JSONResponse:
    ctx, caller = context(request), caller_of(request)
    wanted = body.subnet
    segment = await ctx.read(lambda s: subnets(s, caller, ctx.neutron).segment_of(wanted))
    facts: VlanFacts | None = None
    if isinstance(segment, Vlan):
        facts = await ctx.vlan_facts_for(segment.id)
    prefixes = await ctx.host(ctx.inspector.host_prefixes)
    row, op = await ctx.mutate(
        lambda s: subnets(s, caller, ctx.neutron).create(wanted, prefixes, facts)
    )
    await settle(ctx, row, op, wait=0)
    view = await ctx.read(lambda s: subnets(s, caller, ctx.neutron).view(row.id))
    return JSONResponse({"subnet": view}, status_code=201)


@router.put(
    "/{subnet_id}",
    operation_id="neutron_update_subnet",
    response_model=NeutronSubnetEnvelope,
    description="If-Match: revision_number=N: 412 when the subnet is at another revision.",
)
async def update_subnet(
    subnet_id: str, body: NeutronSubnetUpdateRequest, request: Request
) -> JSONResponse:
    ctx, caller = context(request), caller_of(request)
    expected = revision(request)
    row, op = await ctx.mutate(
        lambda s: subnets(s, caller, ctx.neutron).update(subnet_id, body.subnet, expected)
    )
    await settle(ctx, row, op, wait=0)
    view = await ctx.read(lambda s: subnets(s, caller, ctx.neutron).view(row.id))
    return JSONResponse({"subnet": view})


@router.delete(
    "/{subnet_id}",
    operation_id="neutron_delete_subnet",
    status_code=204,
    description="409 SubnetInUse naming the ports and VM NICs with fixed IPs on it. If-Match: "
    "revision_number=N: 412 when the subnet is at another revision.",
)
async def delete_subnet(subnet_id: str, request: Request) -> Response:
    ctx, caller = context(request), caller_of(request)
    expected = revision(request)
    row, op = await ctx.mutate(
        lambda s: subnets(s, caller, ctx.neutron).delete(subnet_id, expected)
    )
    await settle(ctx, row, op)  # its name and CIDR are free again at 204 (or after 5 s)
    return Response(status_code=204)
