"""Liveness and readiness; open on every listener (no token)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.api.deps import context
from app.api.strict import StrictRoute
from app.schemas.host import Health

router = APIRouter(tags=["health"], route_class=StrictRoute)


@router.get("/healthz", operation_id="get_health", response_model=Health)
async def get_health() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    operation_id="get_readiness",
    response_model=Health,
    responses={503: {"model": Health, "description": "Not ready yet"}},
)
async def get_readiness(request: Request) -> Health | JSONResponse:
    """Ready once the supervisor has finished its first full reconcile pass."""
    ctx = context(request)
    if ctx.is_ready():
        return Health(status="ready")
    return JSONResponse(
        Health(status="starting", detail="first reconcile pass not finished").model_dump(),
        status_code=503,
    )
