"""What every accepted mutation does to its row: bump the generation (the resource goes
pending, or deleting) and record an operation that ends when the supervisor catches up;
reading operations back, and re-reading a row to wait on it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TypeVar

from app.db.models import (
    Bridge,
    Network,
    Operation,
    Port,
    PortForward,
    ResourceColumns,
    Tap,
    Uplink,
    Vlan,
    Vm,
)
from app.db.repositories import OperationRepository, Repository
from app.db.session import Session
from app.domain.errors import NotFound
from app.domain.status import Status, check_transition
from app.domain.tenancy import EVERY_PROJECT, Caller, Scope
from app.services.scoping import list_scope

R = TypeVar("R", Bridge, Tap, Vm, Network, PortForward, Uplink, Vlan, Port)


def find_operation(session: Session, operation_id: str, scope: Scope = EVERY_PROJECT) -> Operation:
    """The operation with this id; NotFound (404) when there is none (or it was pruned, or
    it is of a project the scope does not see)."""
    op = OperationRepository(session).visible(operation_id, scope)
    if op is None:
        raise NotFound(f"no operation {operation_id!r}")
    return op


def list_operations_page(
    session: Session,
    caller: Caller,
    project: str | None,
    limit: int,
    cursor: str | None,
    resource_id: str | None = None,
) -> tuple[Sequence[Operation], str | None]:
    """A page of the operations the caller sees (`project`: ?project=, list_scope)."""
    scope = list_scope(session, caller, project)
    return OperationRepository(session).page(limit, cursor, scope, resource_id)


def reload(session: Session, row: R) -> R | None:
    """The row as this session sees it now (None once it is gone)."""
    return Repository(session, type(row)).get(row.id)


def bump(row: ResourceColumns, target: Status = Status.PENDING) -> None:
    row.status = check_transition(Status(row.status), target).value
    row.status_reason = None
    row.generation += 1


def record_done(
    session: Session,
    action: str,
    resource: str,
    resource_id: str,
    project_id: str,
    caller: Caller,
) -> Operation:
    """The operation of a change the API completes itself (projects, tokens: nothing for a
    worker to reconcile): succeeded at once, with the same audit trail as the others."""
    now = dt.datetime.now(dt.UTC)
    operation = Operation(
        action=action,
        resource=resource,
        resource_id=resource_id,
        target_generation=1,
        status="succeeded",
        created_at=now,
        finished_at=now,
        request_id=caller.request_id,
        project_id=project_id,
        token_id=caller.principal.token_id,
        via=caller.principal.via.value,
    )
    OperationRepository(session).add(operation)
    return operation


def record_settled_change(
    session: Session, action: str, resource: str, row: ResourceColumns, caller: Caller
) -> Operation:
    """A change that needs nothing of the host (a Neutron tag, a port's name or description):
    a new generation (its revision_number) without going pending. When the row had settled,
    the change is settled at once and its operation succeeded at once (no worker would ever
    finish it: a port's tap, for one, has not changed); otherwise the operation ends with
    the row's pending change, as any other."""
    settled = row.observed_generation == row.generation and row.status != Status.PENDING.value
    row.generation += 1
    operation = record_operation(session, action, resource, row, caller)
    if settled:
        row.observed_generation = row.generation
        operation.status = "succeeded"
        operation.finished_at = dt.datetime.now(dt.UTC)
    return operation


def record_operation(
    session: Session, action: str, resource: str, row: ResourceColumns, caller: Caller
) -> Operation:
    """The operation of one accepted mutation, with its audit trail (issue 11): the
    resource's project, and who asked (the token's id, how it proved itself, the request)."""
    operation = Operation(
        action=action,
        resource=resource,
        resource_id=row.id,
        target_generation=row.generation,
        request_id=caller.request_id,
        project_id=row.project_id,
        token_id=caller.principal.token_id,
        via=caller.principal.via.value,
    )
    OperationRepository(session).add(operation)
    return operation
