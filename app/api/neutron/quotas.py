"""/networking/v2.0/quotas: Neutron's quotas extension over our project quotas (mapping and
rules: app.services.neutron.quotas). network = our `segments`, subnet = `networks`, port =
`ports`; -1 = unlimited.
"""

from __future__ import annotations

from fastapi import Request, Response
from starlette.responses import JSONResponse

from app.api.deps import caller_of, context
from app.api.neutron.common import neutron_router
from app.schemas.neutron import (
    NeutronQuotaDetailsEnvelope,
    NeutronQuotaEnvelope,
    NeutronQuotaRequest,
    NeutronQuotasEnvelope,
)
from app.services.neutron.quotas import NeutronQuotas

EXTENSIONS = ("quotas", "quota_details", "quota-check-limit")
PROJECT = "The project's id (or its name)"

router = neutron_router("quotas")


@router.get(
    "",
    operation_id="neutron_list_quotas",
    response_model=NeutronQuotasEnvelope,
    description="Admin only (403): the projects with a limit on network, subnet or port.",
)
async def list_quotas(request: Request) -> JSONResponse:
    caller = caller_of(request)
    found = await context(request).read(lambda s: NeutronQuotas(s, caller).listed())
    return JSONResponse({"quotas": found})


@router.get(
    "/{project_id}",
    operation_id="neutron_get_quota",
    response_model=NeutronQuotaEnvelope,
    description=f"{PROJECT}. An admin reads any project's, a member its own (another: 403).",
)
async def get_quota(project_id: str, request: Request) -> JSONResponse:
    caller = caller_of(request)
    found = await context(request).read(lambda s: NeutronQuotas(s, caller).shown(project_id))
    return JSONResponse({"quota": found})


@router.get(
    "/{project_id}/details",
    operation_id="neutron_get_quota_details",
    response_model=NeutronQuotaDetailsEnvelope,
    description="used, limit (-1: unlimited) and reserved (always 0) of each resource.",
)
async def get_quota_details(project_id: str, request: Request) -> JSONResponse:
    caller = caller_of(request)
    found = await context(request).read(lambda s: NeutronQuotas(s, caller).details(project_id))
    return JSONResponse({"quota": found})


@router.get(
    "/{project_id}/default",
    operation_id="neutron_get_quota_default",
    response_model=NeutronQuotaEnvelope,
    description="Every project's default: -1 (unlimited) for each resource.",
)
async def get_quota_default(project_id: str, request: Request) -> JSONResponse:
    caller = caller_of(request)
    found = await context(request).read(lambda s: NeutronQuotas(s, caller).default(project_id))
    return JSONResponse({"quota": found})


@router.put(
    "/{project_id}",
    operation_id="neutron_update_quota",
    response_model=NeutronQuotaEnvelope,
    description="Admin only (403). Sets the resources given; -1 unlimited; another key 400.",
)
async def update_quota(
    project_id: str, body: NeutronQuotaRequest, request: Request
) -> JSONResponse:
    caller = caller_of(request)
    found = await context(request).mutate(
        lambda s: NeutronQuotas(s, caller).update(project_id, body.quota)
    )
    return JSONResponse({"quota": found})


@router.delete(
    "/{project_id}",
    operation_id="neutron_delete_quota",
    status_code=204,
    description="Admin only (403): network, subnet and port back to unlimited.",
)
async def delete_quota(project_id: str, request: Request) -> Response:
    caller = caller_of(request)
    await context(request).mutate(lambda s: NeutronQuotas(s, caller).reset(project_id))
    return Response(status_code=204)
