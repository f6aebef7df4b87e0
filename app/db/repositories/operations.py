"""Operations and the event id sequence."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Table, bindparam, delete, select, tuple_, update
from sqlalchemy.orm import Session

from app.db.models import EventSequence, Operation
from app.db.repositories.base import Repository
from app.domain.cursors import decode_cursor, encode_cursor
from app.domain.tenancy import Scope


@dataclass(frozen=True)
class FinishedOperation:
    """A resource reached `generation` (status succeeded) or failed at it."""

    resource_id: str
    generation: int
    status: str
    error: str | None = None


class OperationRepository(Repository[Operation]):
    def __init__(self, session: Session) -> None:
        super().__init__(session, Operation)

    def visible(self, operation_id: str, scope: Scope) -> Operation | None:
        """The operation with this id, if the scope sees its project."""
        found = self.get(operation_id)
        return found if found is not None and scope.sees(found.project_id) else None

    def page(
        self, limit: int, cursor: str | None, scope: Scope, resource_id: str | None = None
    ) -> tuple[Sequence[Operation], str | None]:
        """The operations the scope sees (of one resource: `resource_id`), oldest first,
        keyset-paged like the resources."""
        query = select(Operation).order_by(Operation.created_at, Operation.id).limit(limit + 1)
        if scope.project_id is not None:
            query = query.where(Operation.project_id == scope.project_id)
        if resource_id is not None:
            query = query.where(Operation.resource_id == resource_id)
        if cursor is not None:
            created, row_id = decode_cursor(cursor)
            query = query.where(
                tuple_(Operation.created_at, Operation.id) > tuple_(created, row_id)
            )
        rows = self.session.scalars(query).all()
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if more else None
        return rows, next_cursor

    def prune(self, finished_before: dt.datetime) -> int:
        """Forget operations that ended before the given time; returns how many."""
        result = self.session.execute(
            delete(Operation).where(
                Operation.status != "running", Operation.finished_at < finished_before
            )
        )
        return int(getattr(result, "rowcount", 0) or 0)

    def finish(self, outcomes: list[FinishedOperation]) -> None:
        """Close the running operations that these outcomes satisfy: one UPDATE statement
        run for all of them (executemany), whatever their number."""
        if not outcomes:
            return
        table = cast(Table, Operation.__table__)
        statement = (
            update(table)
            .where(
                table.c.resource_id == bindparam("rid"),
                table.c.status == "running",
                table.c.target_generation <= bindparam("generation"),
            )
            .values(
                status=bindparam("new_status"),
                error=bindparam("error"),
                finished_at=bindparam("now"),
            )
        )
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)  # the column stores naive UTC
        self.session.connection().execute(
            statement,
            [
                {
                    "rid": o.resource_id,
                    "generation": o.generation,
                    "new_status": o.status,
                    "error": o.error,
                    "now": now,
                }
                for o in outcomes
            ],
        )


def reserve_event_ids(session: Session, count: int, minimum: int) -> int:
    """Reserves `count` event ids no run has used, the first of them >= `minimum`; returns the
    first. The row's update is part of the caller's transaction (a write unit of work)."""
    row = session.get(EventSequence, 1)
    if row is None:
        row = EventSequence(id=1, next_id=1)
        session.add(row)
    start = max(row.next_id, minimum)
    row.next_id = start + count
    session.flush()
    return start
