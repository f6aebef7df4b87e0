"""What every accepted mutation does to its row: bump the generation (the resource goes
pending, or deleting) and record an operation that ends when the supervisor catches up;
reading operations back, and re-reading a row to wait on it."""

from __future__ import annotations

from typing import TypeVar

from app.db.models import (
    Bridge,
    Network,
    Operation,
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

R = TypeVar("R", Bridge, Tap, Vm, Network, PortForward, Uplink, Vlan)


def find_operation(session: Session, operation_id: str) -> Operation:
    """The operation with this id; NotFound (404) when there is none (or it was pruned)."""
    op = OperationRepository(session).get(operation_id)
    if op is None:
        raise NotFound(f"no operation {operation_id!r}")
    return op


def reload(session: Session, row: R) -> R | None:
    """The row as this session sees it now (None once it is gone)."""
    return Repository(session, type(row)).get(row.id)


def bump(row: ResourceColumns, target: Status = Status.PENDING) -> None:
    row.status = check_transition(Status(row.status), target).value
    row.status_reason = None
    row.generation += 1


def record_operation(
    session: Session, action: str, resource: str, row: ResourceColumns, request_id: str | None
) -> Operation:
    operation = Operation(
        action=action,
        resource=resource,
        resource_id=row.id,
        target_generation=row.generation,
        request_id=request_id,
    )
    OperationRepository(session).add(operation)
    return operation
