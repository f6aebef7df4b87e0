"""/networking/v2.0/ports: Neutron ports, each one of our ports (/v1/ports), through the
collection engine (filters, fields, paging, sorting, tags) and PortService.

A create answers at once (status DOWN, or BUILD while the tap is being made), as the
native create does without ?wait=: a port's tap is the link worker's, and nothing a client
does next needs it made (a VM NIC on the port waits for it itself).
"""

from __future__ import annotations

import socket
from typing import Any

from fastapi import Request, Response
from starlette.responses import JSONResponse

from app.api.deps import caller_of, context
from app.api.neutron import query
from app.api.neutron.common import base_url, neutron_router, revision, settle, shown
from app.api.neutron.query import Collection, Kind
from app.db.models import new_id
from app.db.session import Session
from app.domain.neutron import NeutronBadRequest, NeutronConfig
from app.domain.ports import port_tap_name
from app.domain.tenancy import Caller
from app.domain.vlans import VlanFacts
from app.schemas.neutron_ports import (
    NeutronPortCreateRequest,
    NeutronPortEnvelope,
    NeutronPortsEnvelope,
    NeutronPortUpdateRequest,
)
from app.services.neutron.ports import NeutronPorts
from app.services.neutron.tags import Locate
from app.services.ports import LeaseReader

PORTS = Collection(
    collection="ports",
    member="port",
    attributes={
        "id": Kind.STR,
        "name": Kind.STR,
        "description": Kind.STR,
        "network_id": Kind.STR,
        "project_id": Kind.STR,
        "tenant_id": Kind.STR,
        "mac_address": Kind.MAC,
        "device_id": Kind.STR,
        "device_owner": Kind.STR,
        "status": Kind.STR,
        "admin_state_up": Kind.BOOL,
        "port_security_enabled": Kind.BOOL,
        "binding:host_id": Kind.STR,
        "binding:vif_type": Kind.STR,
        "binding:vnic_type": Kind.STR,
        "revision_number": Kind.INT,
        "created_at": Kind.TIME,
        "updated_at": Kind.TIME,
        "security_groups": Kind.LIST,
        "fixed_ips": Kind.LIST,  # filtered here (fixed_ips=ip_address=X), not by the engine
    },
    extensions=("binding", "port-security", "allowed-address-pairs"),
)
# Neutron's fixed_ips filter: `fixed_ips=ip_address=10.0.0.5`, `fixed_ips=subnet_id=ID`
FIXED_IP_KEYS = ("ip_address", "subnet_id")

router = neutron_router("ports")


def ports(
    session: Session,
    caller: Caller,
    config: NeutronConfig,
    facts: VlanFacts | None = None,
    leases: LeaseReader | None = None,
) -> NeutronPorts:
    return NeutronPorts(session, caller, config, socket.gethostname(), facts, leases)


def locate(session: Session, caller: Caller, config: NeutronConfig) -> Locate:
    """For the tag routes: a port's row by id (app.services.neutron.tags.Locate)."""
    return ports(session, caller, config).locate


def _fixed_ip_filters(params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """`fixed_ips=<key>=<value>` filters (repeated: all of them hold), as (key, value)."""
    found = []
    for name, value in params:
        if name != "fixed_ips":
            continue
        key, _, wanted = value.partition("=")
        if key not in FIXED_IP_KEYS or not wanted:
            raise NeutronBadRequest(
                f"fixed_ips filter {value!r}: use fixed_ips=ip_address=X or fixed_ips=subnet_id=Y"
            )
        found.append((key, wanted))
    return found


def _has_fixed_ips(row: dict[str, Any], wanted: list[tuple[str, str]]) -> bool:
    return all(any(item.get(k) == v for item in row["fixed_ips"]) for k, v in wanted)


def listing(request: Request, rows: list[dict[str, Any]]) -> JSONResponse:
    """`{ports: [...], ports_links: [...]}` through the engine, after the fixed_ips filter."""
    params = list(request.query_params.multi_items())
    wanted = _fixed_ip_filters(params)
    rows = [r for r in rows if _has_fixed_ips(r, wanted)]
    rest = [(n, v) for n, v in params if n != "fixed_ips"]
    parsed = query.parse(rest, PORTS)
    url = f"{base_url(request)}/v2.0/ports"
    page = query.apply(
        rows, parsed, PORTS, lambda pairs: f"{url}?{query.query_string(pairs)}", params
    )
    body: dict[str, Any] = {"ports": page.items}
    if page.links:
        body["ports_links"] = page.links
    return JSONResponse(body)


@router.get(
    "",
    operation_id="neutron_list_ports",
    response_model=NeutronPortsEnvelope,
    description="Filters: any top-level attribute (repeat = OR), fixed_ips=ip_address=X "
    "and fixed_ips=subnet_id=Y, tags, tags-any, not-tags, not-tags-any; fields; limit, "
    "marker, page_reverse (ports_links); sort_key, sort_dir.",
)
async def list_ports(request: Request) -> JSONResponse:
    ctx, caller = context(request), caller_of(request)
    rows = await ctx.read(lambda s: ports(s, caller, ctx.neutron).views())
    return listing(request, rows)


@router.get("/{port_id}", operation_id="neutron_get_port", response_model=NeutronPortEnvelope)
async def get_port(port_id: str, request: Request) -> JSONResponse:
    ctx, caller = context(request), caller_of(request)
    view = await ctx.read(lambda s: ports(s, caller, ctx.neutron).view(port_id))
    return JSONResponse({"port": shown(request, view)})


@router.post(
    "",
    operation_id="neutron_create_port",
    status_code=201,
    response_model=NeutronPortEnvelope,
    description="A port (a tap `tap` + 11 hex digits of its id) on the network (a bridge or "
    "VLAN), with at most one fixed IPv4 on its subnet (a static DHCP lease; it may lie in "
    "the allocation pool unless another MAC holds a dynamic lease on it: 409). Answers at "
    "once (status DOWN or BUILD). 409 for a taken MAC, address or name, or over the `ports` "
    "quota.",
)
async def create_port(body: NeutronPortCreateRequest, request: Request) -> JSONResponse:
    ctx, caller = context(request), caller_of(request)
    port_id = new_id()
    foreign = await ctx.host(ctx.inspector.foreign_link, port_tap_name(port_id))
    capabilities = await ctx.host(ctx.inspector.capabilities)
    facts = VlanFacts.from_link_probe(capabilities["links"])
    leases = ctx.inspector.leases
    wanted = body.port
    row, op = await ctx.mutate(
        lambda s: ports(s, caller, ctx.neutron, facts, leases).create(wanted, port_id, foreign)
    )
    await settle(ctx, row, op, wait=0)
    view = await ctx.read(lambda s: ports(s, caller, ctx.neutron).view(row.id))
    return JSONResponse({"port": view}, status_code=201)


@router.put(
    "/{port_id}",
    operation_id="neutron_update_port",
    response_model=NeutronPortEnvelope,
    description="name, description, device_id, device_owner, fixed_ips (only while no VM "
    "uses the port: 409), admin_state_up (true only). If-Match: revision_number=N: 412 when "
    "the port is at another revision.",
)
async def update_port(
    port_id: str, body: NeutronPortUpdateRequest, request: Request
) -> JSONResponse:
    ctx, caller = context(request), caller_of(request)
    expected = revision(request)
    leases = ctx.inspector.leases
    row, op = await ctx.mutate(
        lambda s: ports(s, caller, ctx.neutron, None, leases).update(port_id, body.port, expected)
    )
    await settle(ctx, row, op, wait=0)
    view = await ctx.read(lambda s: ports(s, caller, ctx.neutron).view(row.id))
    return JSONResponse({"port": view})


@router.delete(
    "/{port_id}",
    operation_id="neutron_delete_port",
    status_code=204,
    description="Its tap goes with it. 409 PortInUse while a VM uses the port (Neutron would "
    "delete it; kvmnetd refuses: delete the VM or its NIC first). If-Match: "
    "revision_number=N: 412 when the port is at another revision.",
)
async def delete_port(port_id: str, request: Request) -> Response:
    ctx, caller = context(request), caller_of(request)
    expected = revision(request)
    row, op = await ctx.mutate(lambda s: ports(s, caller, ctx.neutron).delete(port_id, expected))
    await settle(ctx, row, op)
    return Response(status_code=204)
