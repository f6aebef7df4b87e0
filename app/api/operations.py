"""/v1/operations: how an accepted mutation ended; ?wait= blocks until it has."""

from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy.orm import Session

from app.api.deps import Wait, context
from app.api.presenters import operation_out
from app.api.waiting import wait_until
from app.db.models import Operation
from app.db.repositories import OperationRepository
from app.domain.errors import NotFound
from app.schemas.common import PROBLEM_RESPONSES
from app.schemas.operations import OperationOut

router = APIRouter(prefix="/v1/operations", tags=["operations"], responses=PROBLEM_RESPONSES)


@router.get("/{operation_id}", operation_id="get_operation", response_model=OperationOut)
async def get_operation(operation_id: str, request: Request, wait: Wait = None) -> OperationOut:
    ctx = context(request)

    def load(session: Session) -> Operation:
        op = OperationRepository(session).get(operation_id)
        if op is None:
            raise NotFound(f"no operation {operation_id!r}")
        return op

    op = await ctx.read(load)
    if wait and op.status == "running":
        waited = await wait_until(ctx, op.resource_id, load, lambda o: o.status != "running", wait)
        op = waited or op
    return operation_out(op)
