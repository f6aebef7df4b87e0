"""/v1/operations: how an accepted mutation ended; ?wait= blocks until it has."""

from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy.orm import Session

from app.api.deps import Wait, context
from app.api.presenters import operation_out
from app.api.strict import StrictRoute
from app.api.waiting import wait_until
from app.db.models import Operation
from app.schemas.common import PROBLEM_RESPONSES
from app.schemas.operations import OperationOut
from app.services.operations import find_operation

router = APIRouter(
    prefix="/v1/operations",
    tags=["operations"],
    responses=PROBLEM_RESPONSES,
    route_class=StrictRoute,
)


@router.get("/{operation_id}", operation_id="get_operation", response_model=OperationOut)
async def get_operation(operation_id: str, request: Request, wait: Wait = None) -> OperationOut:
    ctx = context(request)

    def load(session: Session) -> Operation:
        return find_operation(session, operation_id)

    op = await ctx.read(load)
    if wait and op.status == "running":
        waited = await wait_until(ctx, op.resource_id, load, lambda o: o.status != "running", wait)
        op = waited or op
    return operation_out(op)
