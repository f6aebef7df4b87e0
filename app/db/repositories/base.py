"""The generic repository: get and add by id, lookup by id or name, keyset paging."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Generic, TypeVar

from sqlalchemy import func, select, tuple_
from sqlalchemy.orm import Session

from app.db.models import Base, Bridge, Network, Tap, Vlan, Vm
from app.db.models import PortForward as PortForwardRow
from app.domain.cursors import decode_cursor, encode_cursor
from app.domain.status import Status

M = TypeVar("M", bound=Base)


UUID_LENGTH = 36


R = TypeVar("R", Bridge, Tap, Vm, Network, PortForwardRow, Vlan)


class Repository(Generic[M]):
    def __init__(self, session: Session, model: type[M]) -> None:
        self.session = session
        self.model = model

    def get(self, row_id: str) -> M | None:
        return self.session.get(self.model, row_id)

    def add(self, row: M) -> M:
        self.session.add(row)
        return row

    def all(self) -> Sequence[M]:
        return self.session.scalars(select(self.model)).all()

    def remove(self, row: M) -> None:
        """Delete the row when the unit of work flushes."""
        self.session.delete(row)


class ResourceRepository(Repository[R]):
    """Named resources: lookup by id or name, keyset paging in creation order."""

    # Names unique without regard to case (the services refuse "WEB" next to "web"), so
    # found in any case too, the stored spelling shown: VM names are host names (RFC 4343),
    # VLAN and network names follow them. Such names are ASCII, which SQLite's lower()
    # folds. Link names are kernel names, which are case-sensitive.
    names_fold_case: ClassVar[bool] = False

    def get_by_name(self, name: str) -> R | None:
        """The resource named `name` (without regard to case where `names_fold_case`: the
        oldest, should rows from before that rule differ only in case)."""
        model = self.model
        if not self.names_fold_case:
            return self.session.scalars(select(model).where(model.name == name)).first()
        query = select(model).where(func.lower(model.name) == name.lower())
        return self.session.scalars(query.order_by(model.created_at, model.id)).first()

    def named_in_project(self, project_id: str, name: str) -> R | None:
        """The resource of project `project_id` named exactly `name` (names are unique per
        project: uq_<table>_project_id_name)."""
        model = self.model
        query = select(model).where(model.project_id == project_id, model.name == name)
        return self.session.scalars(query).first()

    def find(self, ref: str) -> R | None:
        """By id, else by name (OpenStack-style clients pass either). A valid link name is
        never 36 characters long, so only a UUID-shaped ref can be an id."""
        if len(ref) == UUID_LENGTH:
            found = self.get(ref)
            if found is not None:
                return found
        return self.get_by_name(ref)

    def page(self, limit: int, cursor: str | None) -> tuple[Sequence[R], str | None]:
        model = self.model
        query = select(model).order_by(model.created_at, model.id).limit(limit + 1)
        if cursor is not None:  # "" too is a cursor, and not one of ours
            created, row_id = decode_cursor(cursor)
            query = query.where(tuple_(model.created_at, model.id) > tuple_(created, row_id))
        rows = self.session.scalars(query).all()
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if more else None
        return rows, next_cursor


LINK_MODELS: tuple[type[Bridge], type[Tap]] = (Bridge, Tap)


def never_created(row: Bridge | Tap) -> bool:
    """In error without ever holding a kernel link (no observed ifindex, no create under
    way): the name it asked for may belong to someone else (eth0 made before the foreign
    link check), so the row stands for no link at all."""
    return (
        row.status == Status.ERROR.value and row.observed_ifindex is None and not row.create_intent
    )
