"""Uplinks: which bridge has one, what moving the host's configuration imposes on it, and
the 802.1Q sub-interfaces of the uplink that bridge_per_vlan VLANs own."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from app.db.models import Bridge, LinkName, Uplink, Vlan
from app.db.repositories.base import Repository
from app.domain.links import LinkKind, LinkSpec
from app.domain.links.vlan import VlanOptions
from app.domain.status import Status
from app.domain.uplinks import JournalError, NicConfig
from app.domain.vlans import VlanBackend, subinterface_name


class UplinkRepository(Repository[Uplink]):
    def __init__(self, session: Session) -> None:
        super().__init__(session, Uplink)

    def of_bridge(self, bridge_id: str) -> Uplink | None:
        return uplink_of(self.session, bridge_id)

    def on_interface(self, interface: str) -> Uplink | None:
        """The uplink that enslaves this host NIC, if any."""
        return self.session.scalars(select(Uplink).where(Uplink.name == interface)).first()

    def with_bridge_names(self) -> list[tuple[str, Uplink]]:
        """Every uplink with its bridge's kernel name (ifname)."""
        query = select(Bridge.ifname, Uplink).join(Bridge, Bridge.id == Uplink.bridge_id)
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


# ---- the uplink's 802.1Q sub-interfaces of bridge_per_vlan VLANs ---------------------------
# A bridge_per_vlan VLAN owns `<uplink>.<vid>` while its trunk has an uplink (app.domain.vlans
# kernel_objects): an uplink set after the VLAN claims the name for the VLAN and makes the
# link pass look at the VLAN; an uplink being removed takes the sub-interface with it.


def _per_vlan_vlans(bridge_id: str) -> Any:
    return select(Vlan.id, Vlan.vlan_id).where(
        Vlan.trunk_id == bridge_id,
        Vlan.backend == VlanBackend.BRIDGE_PER_VLAN.value,
    )


def uplink_subinterfaces(
    session: Session, bridge_id: str, interface: str, live_only: bool = True
) -> list[tuple[str, str]]:
    """(sub-interface name, VLAN row id) of `interface`'s 802.1Q links that the bridge's
    bridge_per_vlan VLANs own (with `live_only`: those not being deleted), by VID."""
    query = _per_vlan_vlans(bridge_id).order_by(Vlan.vlan_id)
    if live_only:
        query = query.where(Vlan.deleted.is_(False))
    return [(subinterface_name(interface, vid), vlan_id) for vlan_id, vid in session.execute(query)]


def release_uplink_subinterfaces(session: Session, row: Uplink) -> None:
    """The uplink goes: its sub-interfaces' names are no VLAN's any more."""
    names = [name for name, _ in uplink_subinterfaces(session, row.bridge_id, row.name, False)]
    if names:
        session.execute(
            delete(LinkName).where(LinkName.name.in_(names), LinkName.resource == "vlan")
        )


def vlans_on_moving_uplinks(session: Session) -> list[str]:
    """Ids of the bridge_per_vlan VLANs whose trunk's uplink is being set or removed (its
    row unsettled): their `<uplink>.<vid>` comes or goes with it."""
    query = (
        select(Vlan.id)
        .join(Uplink, Uplink.bridge_id == Vlan.trunk_id)
        .where(
            Vlan.backend == VlanBackend.BRIDGE_PER_VLAN.value,
            or_(
                Uplink.generation != Uplink.observed_generation,
                Uplink.status.in_((Status.PENDING.value, Status.DELETING.value)),
            ),
        )
    )
    return list(session.scalars(query))


def leaving_uplinks(session: Session) -> dict[str, str]:
    """Bridge id -> the NIC name of its uplink that is being removed."""
    query = select(Uplink.bridge_id, Uplink.name).where(Uplink.deleted.is_(True))
    return {bridge_id: name for bridge_id, name in session.execute(query)}


def leaving_subinterface_specs(
    vlan_id: str, trunk_id: str, vid: int, backend: VlanBackend, leaving: Mapping[str, str]
) -> list[LinkSpec]:
    """The 802.1Q link `<uplink>.<vid>` of a bridge_per_vlan VLAN whose trunk's uplink is
    being removed, as a deleted spec: the link pass removes it (ours: marked with the VLAN's
    id) at once, not only at the next full pass's sweep."""
    uplink = leaving.get(trunk_id)
    if uplink is None or backend is not VlanBackend.BRIDGE_PER_VLAN:
        return []
    return [
        LinkSpec(
            id=vlan_id,
            kind=LinkKind.VLAN,
            name=subinterface_name(uplink, vid),
            deleted=True,
            parent=uplink,
            options=VlanOptions(vid=vid),
        )
    ]
