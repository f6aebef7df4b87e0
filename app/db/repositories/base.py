"""The generic repository: get and add by id, lookup by id or name, keyset paging."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Generic, TypeVar

from sqlalchemy import Select, func, select, tuple_
from sqlalchemy.orm import Session

from app.db.models import Base, Bridge, Network, Port, Tap, Vlan, Vm
from app.db.models import PortForward as PortForwardRow
from app.domain.cursors import decode_cursor, encode_cursor
from app.domain.status import Status
from app.domain.tenancy import Scope

M = TypeVar("M", bound=Base)


UUID_LENGTH = 36


R = TypeVar("R", Bridge, Tap, Vm, Network, PortForwardRow, Vlan, Port)


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
    """Named resources of a project: lookup by id or name and keyset paging in creation
    order, each within a Scope (app.domain.tenancy), so that no request lookup can forget
    the caller's project: another project's row is found as None, as an unknown id is.
    `get(id)` stays unscoped: it is for ids the daemon itself holds (a VLAN's trunk, a
    NIC's bridge), never for what a request names."""

    # Names unique without regard to case (the services refuse "WEB" next to "web"), so
    # found in any case too, the stored spelling shown: VM names are host names (RFC 4343),
    # VLAN and network names follow them. Such names are ASCII, which SQLite's lower()
    # folds. Link names are kernel names, which are case-sensitive.
    names_fold_case: ClassVar[bool] = False

    def _named(self, name: str) -> Select[Any]:
        model = self.model
        if not self.names_fold_case:
            return select(model).where(model.name == name)
        return select(model).where(func.lower(model.name) == name.lower())

    def named_in_project(self, project_id: str, name: str) -> R | None:
        """The resource of project `project_id` named exactly `name` (names are unique per
        project: uq_<table>_project_id_name)."""
        model = self.model
        query = select(model).where(model.project_id == project_id, model.name == name)
        return self.session.scalars(query).first()

    def get_by_name(self, name: str, scope: Scope) -> R | None:
        """The resource named `name` in the scope's home project (any project for a scope
        without one), without regard to case where `names_fold_case` (the oldest, should
        rows from before that rule differ only in case)."""
        model = self.model
        query = self._named(name)
        if scope.home is not None:
            query = query.where(model.project_id == scope.home)
        if scope.project_id is not None:
            query = query.where(model.project_id == scope.project_id)
        found: R | None = self.session.scalars(query.order_by(model.created_at, model.id)).first()
        return found

    def name_holder(self, name: str, project_id: str, except_id: str | None = None) -> R | None:
        """The resource of project `project_id` that has `name` (in any case where names
        fold case), other than `except_id`: names are unique per project."""
        model = self.model
        query = self._named(name).where(model.project_id == project_id)
        if except_id is not None:
            query = query.where(model.id != except_id)
        found: R | None = self.session.scalars(query.order_by(model.created_at, model.id)).first()
        return found

    def visible(self, row_id: str, scope: Scope) -> R | None:
        """The row with this id, if the scope sees its project."""
        found = self.get(row_id)
        return found if found is not None and scope.sees(found.project_id) else None

    def find(self, ref: str, scope: Scope) -> R | None:
        """By id, else by name (OpenStack-style clients pass either), within `scope`. A
        valid link name is never 36 characters long, so only a UUID-shaped ref can be an
        id."""
        if len(ref) == UUID_LENGTH:
            found = self.visible(ref, scope)
            if found is not None:
                return found
        return self.get_by_name(ref, scope)

    def page(self, limit: int, cursor: str | None, scope: Scope) -> tuple[Sequence[R], str | None]:
        """A page of the rows the scope sees, in creation order."""
        model = self.model
        query = select(model).order_by(model.created_at, model.id).limit(limit + 1)
        if scope.project_id is not None:
            query = query.where(model.project_id == scope.project_id)
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
