"""The reads behind the Neutron view's lists (issue 12): every live segment row (bridges and
VLANs) a scope sees, the managed networks on them (Neutron subnets) and the segments some
project shares, each in one query, so that a list of 1000 networks costs a few queries."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Bridge, Network, Project, Vlan
from app.domain.tenancy import Scope


def live_segments(session: Session, scope: Scope) -> tuple[Sequence[Bridge], Sequence[Vlan]]:
    """The bridges and VLANs not being deleted that the scope sees, in creation order."""
    bridges = select(Bridge).where(Bridge.deleted.is_(False))
    vlans = select(Vlan).where(Vlan.deleted.is_(False))
    if scope.project_id is not None:
        bridges = bridges.where(Bridge.project_id == scope.project_id)
        vlans = vlans.where(Vlan.project_id == scope.project_id)
    return (
        session.scalars(bridges.order_by(Bridge.created_at, Bridge.id)).all(),
        session.scalars(vlans.order_by(Vlan.created_at, Vlan.id)).all(),
    )


def segment_networks(session: Session) -> dict[str, list[str]]:
    """Segment id (a VLAN's, else the bridge's) -> the ids of the live managed networks on
    it, in creation order."""
    query = (
        select(Network.id, Network.bridge_id, Network.vlan_id)
        .where(Network.deleted.is_(False))
        .order_by(Network.created_at, Network.id)
    )
    found: dict[str, list[str]] = defaultdict(list)
    for network_id, bridge_id, vlan_id in session.execute(query):
        segment = vlan_id or bridge_id
        if segment is not None:
            found[segment].append(network_id)
    return dict(found)


def segment_subnets(session: Session, scope: Scope) -> list[tuple[Network, str]]:
    """The live managed networks on a bridge or VLAN (Neutron subnets; a routed tap's are
    not in the Neutron view) that the scope sees, each with its segment's id (the Neutron
    network_id), in creation order."""
    query = select(Network).where(
        Network.deleted.is_(False),
        (Network.bridge_id.is_not(None)) | (Network.vlan_id.is_not(None)),
    )
    if scope.project_id is not None:
        query = query.where(Network.project_id == scope.project_id)
    rows = session.scalars(query.order_by(Network.created_at, Network.id)).all()
    return [(row, row.vlan_id or row.bridge_id or "") for row in rows]


def subnets_on(session: Session, segment_ids: Sequence[str]) -> list[tuple[Network, str]]:
    """The live managed networks on these segments (bridges or VLANs), with the segment."""
    if not segment_ids:
        return []
    ids = list(segment_ids)
    query = select(Network).where(
        Network.deleted.is_(False), Network.bridge_id.in_(ids) | Network.vlan_id.in_(ids)
    )
    rows = session.scalars(query.order_by(Network.created_at, Network.id)).all()
    return [(row, row.vlan_id or row.bridge_id or "") for row in rows]


def shared_segment_ids(session: Session) -> set[str]:
    """The ids of the objects some project lists in its shared_segments."""
    ids: set[str] = set()
    for entries in session.scalars(select(Project.shared_segments)):
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                ids.add(entry["id"])
    return ids


def bridge_mtus(session: Session, ids: Sequence[str]) -> dict[str, int | None]:
    """Bridge id -> its wanted MTU (None: the default), for VLANs' trunks."""
    if not ids:
        return {}
    query = select(Bridge.id, Bridge.mtu).where(Bridge.id.in_(list(ids)))
    return {row_id: mtu for row_id, mtu in session.execute(query)}
