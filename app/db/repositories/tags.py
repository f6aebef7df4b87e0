"""Neutron tags (table `tags`): read per resource in one query, replaced, added, removed."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.db.models import Tag


class TagRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def of(self, resource: str, resource_id: str) -> list[str]:
        """The tags of one resource, sorted."""
        query = select(Tag.tag).where(Tag.resource == resource, Tag.resource_id == resource_id)
        return sorted(self.session.scalars(query))

    def of_each(self, resource: str, ids: Sequence[str]) -> dict[str, list[str]]:
        """resource id -> its tags for the resources `ids`: one resource's alone (a show,
        or a create's or update's answer, never reads every resource's tags:
        bench/neutron.py), a list's in one query (by_resource)."""
        if len(ids) == 1:
            return {ids[0]: self.of(resource, ids[0])}
        return self.by_resource(resource)

    def by_resource(self, resource: str) -> dict[str, list[str]]:
        """resource id -> its tags (sorted), for every tagged resource of this kind: one
        query for a whole list."""
        found: dict[str, list[str]] = defaultdict(list)
        query = select(Tag.resource_id, Tag.tag).where(Tag.resource == resource).order_by(Tag.tag)
        for resource_id, tag in self.session.execute(query):
            found[resource_id].append(tag)
        return dict(found)

    def replace(self, resource: str, resource_id: str, tags: Iterable[str]) -> None:
        self.clear(resource, resource_id)
        for tag in sorted(set(tags)):
            self.session.add(Tag(resource=resource, resource_id=resource_id, tag=tag))

    def add(self, resource: str, resource_id: str, tag: str) -> bool:
        """Adds the tag; False when the resource had it already."""
        if self.session.get(Tag, (resource, resource_id, tag)) is not None:
            return False
        self.session.add(Tag(resource=resource, resource_id=resource_id, tag=tag))
        return True

    def remove(self, resource: str, resource_id: str, tag: str) -> bool:
        """Removes the tag; False when the resource did not have it."""
        row = self.session.get(Tag, (resource, resource_id, tag))
        if row is None:
            return False
        self.session.delete(row)
        return True

    def clear(self, resource: str, resource_id: str) -> None:
        self.session.execute(
            delete(Tag).where(Tag.resource == resource, Tag.resource_id == resource_id)
        )
