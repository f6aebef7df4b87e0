"""Neutron tags of any resource of the Neutron API (issue 12): read, replace, add, remove.

Generic over the collection: the caller passes `locate` (the collection's lookup of a row by
id as the caller sees it, for writing or not; 404 as Neutron for an unknown one). Every
change bumps the row's generation (its revision_number) and records an operation of the
row's own kind (bridge, vlan, network, port), settled at once: tags need nothing of the host.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from app.db.models import Operation, ResourceColumns
from app.db.repositories import TagRepository
from app.db.session import Session
from app.domain.neutron import NeutronError, check_revision, validate_tag
from app.domain.tenancy import Caller
from app.services.operations import record_settled_change

Locate = Callable[[str, bool], ResourceColumns]


def row_kind(row: ResourceColumns) -> str:
    """The resource name our operations and events use for the row (its table's singular)."""
    table: str = getattr(type(row), "__tablename__", "")
    return table.removesuffix("s")


class TagService:
    def __init__(
        self,
        session: Session,
        caller: Caller,
        resource: str,
        locate: Locate,
        revision: int | None = None,
    ) -> None:
        """`revision`: the request's If-Match revision_number (a change of the tags is a
        revision of the resource: 412 RevisionNumberConstraintFailed when it is at another)."""
        self.session = session
        self.caller = caller
        self.resource = resource
        self.locate = locate
        self.revision = revision
        self.tags = TagRepository(session)

    def _writable(self, resource_id: str) -> ResourceColumns:
        row = self.locate(resource_id, True)
        check_revision(self.revision, row.generation)
        return row

    def get(self, resource_id: str) -> list[str]:
        row = self.locate(resource_id, False)
        return self.tags.of(self.resource, row.id)

    def has(self, resource_id: str, tag: str) -> None:
        """Nothing when the resource has the tag; 404 TagNotFound else."""
        if tag not in self.get(resource_id):
            raise self._no_tag(resource_id, tag)

    def replace(
        self, resource_id: str, tags: Sequence[str]
    ) -> tuple[ResourceColumns, Operation | None, list[str]]:
        wanted = sorted({validate_tag(t) for t in tags})
        row = self._writable(resource_id)
        if self.tags.of(self.resource, row.id) == wanted:
            return row, None, wanted
        self.tags.replace(self.resource, row.id, wanted)
        return row, self._changed(row), wanted

    def add(self, resource_id: str, tag: str) -> tuple[ResourceColumns, Operation | None]:
        validate_tag(tag)
        row = self._writable(resource_id)
        if not self.tags.add(self.resource, row.id, tag):
            return row, None
        return row, self._changed(row)

    def remove(self, resource_id: str, tag: str) -> tuple[ResourceColumns, Operation]:
        row = self._writable(resource_id)
        if not self.tags.remove(self.resource, row.id, tag):
            raise self._no_tag(resource_id, tag)
        return row, self._changed(row)

    def clear(self, resource_id: str) -> tuple[ResourceColumns, Operation | None]:
        row = self._writable(resource_id)
        if not self.tags.of(self.resource, row.id):
            return row, None
        self.tags.clear(self.resource, row.id)
        return row, self._changed(row)

    def _changed(self, row: ResourceColumns) -> Operation:
        # revision_number: every change of the resource, its tags included; nothing for a
        # worker to do (tags live only here)
        return record_settled_change(self.session, "update", row_kind(row), row, self.caller)

    def _no_tag(self, resource_id: str, tag: str) -> NeutronError:
        return NeutronError(
            404, "TagNotFound", f"Tag {tag} could not be found for {self.resource} {resource_id}."
        )
