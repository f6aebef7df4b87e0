"""Queries about VLANs (app.db.models.Vlan): lookup by id or name, paging, and what a trunk
carries. Names are unique without regard to case, so a name finds its VLAN in any case."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select, tuple_
from sqlalchemy.orm import Session

from app.db.models import Bridge, Uplink, Vlan
from app.domain.cursors import decode_cursor, encode_cursor

UUID_LENGTH = 36


class VlanRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, row_id: str) -> Vlan | None:
        return self.session.get(Vlan, row_id)

    def add(self, row: Vlan) -> Vlan:
        self.session.add(row)
        return row

    def name_holder(self, name: str, except_id: str | None = None) -> Vlan | None:
        """The VLAN whose name equals `name` without regard to case (names are ASCII,
        which SQLite's lower() folds), other than `except_id`."""
        query = select(Vlan).where(func.lower(Vlan.name) == name.lower())
        if except_id is not None:
            query = query.where(Vlan.id != except_id)
        return self.session.scalars(query.order_by(Vlan.created_at)).first()

    def find(self, ref: str) -> Vlan | None:
        """By id, else by name in any case (a VLAN name is never 36 characters long)."""
        if len(ref) == UUID_LENGTH:
            found = self.get(ref)
            if found is not None:
                return found
        return self.name_holder(ref)

    def page(self, limit: int, cursor: str | None) -> tuple[Sequence[Vlan], str | None]:
        query = select(Vlan).order_by(Vlan.created_at, Vlan.id).limit(limit + 1)
        if cursor is not None:  # "" too is a cursor, and not one of ours
            created, row_id = decode_cursor(cursor)
            query = query.where(tuple_(Vlan.created_at, Vlan.id) > tuple_(created, row_id))
        rows = self.session.scalars(query).all()
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if more else None
        return rows, next_cursor

    def on_trunk(self, trunk_id: str, live_only: bool = False) -> Sequence[Vlan]:
        """The VLANs on a trunk in creation order (with `live_only`: not being deleted)."""
        query = select(Vlan).where(Vlan.trunk_id == trunk_id)
        if live_only:
            query = query.where(Vlan.deleted.is_(False))
        return self.session.scalars(query.order_by(Vlan.created_at, Vlan.id)).all()

    def holding(self, trunk_id: str, vlan_id: int) -> Vlan | None:
        """The VLAN with this VID on this trunk (deleted or not: until its objects are
        gone, the VID stays its own)."""
        query = select(Vlan).where(Vlan.trunk_id == trunk_id, Vlan.vlan_id == vlan_id)
        return self.session.scalars(query).first()

    def trunks(self, trunk_ids: Sequence[str]) -> dict[str, tuple[str, str | None]]:
        """Bridge id -> (bridge name, the name of its uplink NIC, None without one or while
        it is being removed), in one query."""
        query = (
            select(Bridge.id, Bridge.name, Uplink.name)
            .outerjoin(Uplink, (Uplink.bridge_id == Bridge.id) & Uplink.deleted.is_(False))
            .where(Bridge.id.in_(trunk_ids))
        )
        return {row_id: (name, uplink) for row_id, name, uplink in self.session.execute(query)}
