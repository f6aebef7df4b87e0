"""What every accepted mutation does to its row: bump the generation (the resource goes
pending, or deleting) and record an operation that ends when the supervisor catches up."""

from __future__ import annotations

from app.db.models import Operation, ResourceColumns
from app.db.repositories import OperationRepository
from app.db.session import Session
from app.domain.status import Status, check_transition


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
