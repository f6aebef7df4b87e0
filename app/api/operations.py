"""/v1/operations: how an accepted mutation ended; ?wait= blocks until it has."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from sqlalchemy.orm import Session

from app.api.deps import Cursor, Limit, ProjectFilter, Wait, caller_of, context
from app.api.presenters import operation_out
from app.api.strict import StrictRoute
from app.api.waiting import wait_until
from app.db.models import Operation
from app.schemas.common import PROBLEM_RESPONSES
from app.schemas.operations import OperationOut, OperationPage
from app.services.operations import find_operation, list_operations_page

router = APIRouter(
    prefix="/v1/operations",
    tags=["operations"],
    responses=PROBLEM_RESPONSES,
    route_class=StrictRoute,
)


@router.get("", operation_id="list_operations", response_model=OperationPage)
async def list_operations(
    request: Request,
    limit: Limit = 100,
    cursor: Cursor = None,
    project: ProjectFilter = None,
    resource_id: Annotated[
        str | None, Query(min_length=1, max_length=36, description="Only this resource's")
    ] = None,
) -> OperationPage:
    """The audit trail (issue 11): each accepted mutation with its project, the token that
    asked (`token_id`, `via`) and its request id, oldest first. A member or reader sees its
    project's; an admin every project's, or one project's with ?project=. Finished
    operations are pruned after a while."""
    caller = caller_of(request)

    def page(session: Session) -> OperationPage:
        rows, next_cursor = list_operations_page(
            session, caller, project, limit, cursor, resource_id
        )
        return OperationPage(items=[operation_out(r) for r in rows], next_cursor=next_cursor)

    return await context(request).read(page)


@router.get("/{operation_id}", operation_id="get_operation", response_model=OperationOut)
async def get_operation(operation_id: str, request: Request, wait: Wait = None) -> OperationOut:
    """One operation; 404 also for another project's (to a member or reader)."""
    ctx, scope = context(request), caller_of(request).scope

    def load(session: Session) -> Operation:
        return find_operation(session, operation_id, scope)

    op = await ctx.read(load)
    if wait and op.status == "running":
        waited = await wait_until(ctx, op.resource_id, load, lambda o: o.status != "running", wait)
        op = waited or op
    return operation_out(op)
