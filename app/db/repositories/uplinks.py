"""Uplinks: which bridge has one and what moving the host's configuration imposes on it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from app.db.models import Bridge, Uplink
from app.db.repositories.base import Repository
from app.domain.status import Status
from app.domain.uplinks import JournalError, NicConfig


class UplinkRepository(Repository[Uplink]):
    def __init__(self, session: Session) -> None:
        super().__init__(session, Uplink)

    def of_bridge(self, bridge_id: str) -> Uplink | None:
        return uplink_of(self.session, bridge_id)

    def on_interface(self, interface: str) -> Uplink | None:
        """The uplink that enslaves this host NIC, if any."""
        return self.session.scalars(select(Uplink).where(Uplink.name == interface)).first()

    def with_bridge_names(self) -> list[tuple[str, Uplink]]:
        """Every uplink with its bridge's name."""
        query = select(Bridge.name, Uplink).join(Bridge, Bridge.id == Uplink.bridge_id)
        return [(name, row) for name, row in self.session.execute(query)]

    def with_bridges(
        self, unsettled_only: bool, unsettled_phases: Sequence[str]
    ) -> list[tuple[Uplink, Bridge]]:
        """Uplinks with their bridges: all, or those whose desired state is not reached
        (generation ahead, pending or deleting, or caught in one of `unsettled_phases`)."""
        query = select(Uplink, Bridge).join(Bridge, Bridge.id == Uplink.bridge_id)
        if unsettled_only:
            query = query.where(
                or_(
                    Uplink.generation != Uplink.observed_generation,
                    Uplink.status.in_((Status.PENDING.value, Status.DELETING.value)),
                    Uplink.phase.in_(unsettled_phases),
                )
            )
        return [(row, bridge) for row, bridge in self.session.execute(query)]


def uplink_of(session: Session, bridge_id: str) -> Uplink | None:
    return session.scalars(select(Uplink).where(Uplink.bridge_id == bridge_id)).first()


def uplinks_of(session: Session, bridge_ids: Sequence[str]) -> dict[str, Uplink]:
    """Bridge id -> its uplink, for the bridges that have one (one query)."""
    query = select(Uplink).where(Uplink.bridge_id.in_(bridge_ids))
    return {row.bridge_id: row for row in session.scalars(query)}


@dataclass(frozen=True)
class UplinkMove:
    """What an uplink that moved (or is moving) the host's configuration onto a bridge
    imposes on it: the NIC's addresses, its MAC (with take_mac) and its MTU."""

    addresses: tuple[str, ...] = ()
    mac: str | None = None
    mtu: int | None = None


def uplink_moves(session: Session) -> dict[str, UplinkMove]:
    """Bridge id -> what its uplink imposes on it while the host's configuration is moved
    (or moving) onto it, for every bridge that has an uplink row at all."""
    result: dict[str, UplinkMove] = {}
    for bridge_id, phase, saved, take_mac in session.execute(
        select(Uplink.bridge_id, Uplink.phase, Uplink.saved, Uplink.take_mac)
    ):
        if not (phase in ("moving", "attached") and saved):
            result[bridge_id] = UplinkMove()
            continue
        result[bridge_id] = _uplink_move(saved, take_mac)
    return result


def _uplink_move(saved: Any, take_mac: bool) -> UplinkMove:
    """What an uplink journal says it moved; a journal that cannot be read (the uplink
    worker reports that on the uplink) moved nothing the bridge could keep."""
    try:
        nic = NicConfig.from_json(saved)
    except JournalError:
        return UplinkMove()
    return UplinkMove(
        addresses=tuple(a.cidr for a in nic.addresses),
        mac=nic.mac if take_mac else None,
        mtu=nic.mtu,
    )
