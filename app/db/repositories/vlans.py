"""Queries about VLANs (app.db.models.Vlan): lookup by id or name, paging, and what a trunk
carries. Names are unique without regard to case, so a name finds its VLAN in any case."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.models import Bridge, Uplink, Vlan
from app.db.repositories.base import ResourceRepository


class VlanRepository(ResourceRepository[Vlan]):
    def __init__(self, session: Session) -> None:
        super().__init__(session, Vlan)

    def name_holder(self, name: str, except_id: str | None = None) -> Vlan | None:
        """The VLAN whose name equals `name` without regard to case (names are ASCII,
        which SQLite's lower() folds), other than `except_id`."""
        query = select(Vlan).where(func.lower(Vlan.name) == name.lower())
        if except_id is not None:
            query = query.where(Vlan.id != except_id)
        return self.session.scalars(query.order_by(Vlan.created_at)).first()

    def get_by_name(self, name: str) -> Vlan | None:
        """Names are unique without regard to case: any case finds the VLAN."""
        return self.name_holder(name)

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
