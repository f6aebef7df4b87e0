"""Queries about VLANs (app.db.models.Vlan): lookup by id or name, paging, what a trunk
carries, and what the supervisor realizes: the links a VLAN owns as planner specs and the
per-port membership of a filtering trunk. Names are unique without regard to case, so a
name finds its VLAN in any case."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from app.db.models import Bridge, Network, Uplink, Vlan
from app.db.repositories.base import ResourceRepository
from app.db.repositories.port_vlans import tap_port_vlans
from app.domain.links import LinkKind, LinkSpec, bridge_mtu, generate_mac
from app.domain.links.vlan import VlanOptions
from app.domain.status import Status
from app.domain.vlan_ports import (
    DEFAULT_PVID_OFF,
    BridgeVlans,
    Membership,
    bridge_self,
    on_join,
    trunk_port,
)
from app.domain.vlans import (
    KernelObject,
    TrunkNames,
    VlanBackend,
    VlanBridge,
    VlanObjectKind,
    VlanObjectRole,
    kernel_objects,
    subinterface_name,
    vlan_bridge_name,
)

# the uplink journal's phase once the NIC is the bridge's port (app.supervisor.uplinks)
UPLINK_ATTACHED = "attached"


class VlanRepository(ResourceRepository[Vlan]):
    names_fold_case = True  # VLAN names are unique per project without regard to case

    def __init__(self, session: Session) -> None:
        super().__init__(session, Vlan)

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

    def trunks(self, trunk_ids: Sequence[str]) -> dict[str, TrunkNames]:
        """Bridge id -> its name, kernel name and the name of its uplink NIC (None without
        one or while it is being removed), in one query."""
        query = (
            select(Bridge.id, Bridge.name, Bridge.ifname, Uplink.name)
            .outerjoin(Uplink, (Uplink.bridge_id == Bridge.id) & Uplink.deleted.is_(False))
            .where(Bridge.id.in_(trunk_ids))
        )
        return {
            row_id: TrunkNames(name, ifname, uplink)
            for row_id, name, ifname, uplink in self.session.execute(query)
        }

    def with_network(self, ids: Sequence[str]) -> set[str]:
        """Which of these VLANs carry a live managed network (the host has an address on
        them: app.domain.vlans.kernel_objects' `l3`)."""
        query = select(Network.vlan_id).where(
            Network.vlan_id.in_(list(ids)), Network.deleted.is_(False)
        )
        return {vlan_id for vlan_id in self.session.scalars(query) if vlan_id is not None}

    def vlan_bridges(self, trunk_ids: Sequence[str]) -> dict[str, list[VlanBridge]]:
        """Trunk bridge id -> the own bridges of its bridge_per_vlan VLANs, by VID (those
        being deleted too: their bridges are there until the supervisor removed them)."""
        query = (
            select(Vlan.id, Vlan.name, Vlan.vlan_id, Vlan.trunk_id, Bridge.ifname)
            .join(Bridge, Bridge.id == Vlan.trunk_id)
            .where(
                Vlan.trunk_id.in_(list(trunk_ids)),
                Vlan.backend == VlanBackend.BRIDGE_PER_VLAN.value,
            )
            .order_by(Vlan.vlan_id)
        )
        found: dict[str, list[VlanBridge]] = {}
        for row_id, name, vid, trunk_id, trunk in self.session.execute(query):
            bridge = vlan_bridge_name(trunk, vid)
            found.setdefault(trunk_id, []).append(VlanBridge(bridge, vid, row_id, name))
        return found


# ---- what the supervisor realizes --------------------------------------------------------


@dataclass(frozen=True)
class VlanWork:
    """A VLAN row as one reconcile pass needs it: its trunk's kernel name, MTU and uplink
    NIC (None without one; `uplink_port`: the NIC is the trunk's port now, moved in), and
    the row's state when loaded."""

    id: str
    name: str
    vid: int
    backend: VlanBackend
    trunk_id: str
    trunk: str
    trunk_mtu: int
    uplink: str | None
    uplink_port: bool
    deleted: bool
    generation: int
    observed_generation: int
    status: str
    status_reason: str | None
    never_settled: bool
    gateway: str | None = None  # `a.b.c.d/len` of the managed network on the VLAN, if any

    def objects(self) -> tuple[KernelObject, ...]:
        return kernel_objects(
            self.backend, self.trunk, self.vid, self.uplink, l3=self.gateway is not None
        )


def vlan_bridge_mac(vlan_id: str) -> str:
    """The fixed MAC of a VLAN's own bridge: derived from the VLAN's id (sha256), so it is
    generated once for the VLAN's whole life and kept in the row's id; a locally administered
    unicast address (generate_mac), never recalculated from the ports."""
    digest = hashlib.sha256(f"kvmnetd-vlan-bridge:{vlan_id}".encode()).digest()
    return generate_mac(lambda n: digest[:n])


def load_vlan_work(
    session: Session,
    dirty_only: bool = False,
    ids: Sequence[str] = (),
    names: Sequence[str] | None = None,
) -> list[VlanWork]:
    """VLANs with their trunks, uplinks and managed networks: all; or (dirty_only) the
    unsettled ones plus `ids`; or (names) those owning a kernel link of one of these names
    (vlan_link_names). One query: every name a VLAN owns ends in its VID (`.<vid>` or
    `v<vid>`, app.domain.vlans), so the query narrows by those VIDs and the exact names are
    compared here (the derived short names cannot be computed in SQL)."""
    query = (
        select(
            Vlan,
            Bridge.ifname,
            Bridge.mtu,
            Uplink.name,
            Uplink.phase,
            Network.gateway,
            Network.subnet,
        )
        .join(Bridge, Bridge.id == Vlan.trunk_id)
        .outerjoin(Uplink, (Uplink.bridge_id == Bridge.id) & Uplink.deleted.is_(False))
        # at most one network per VLAN (uq_networks_vlan_id)
        .outerjoin(Network, (Network.vlan_id == Vlan.id) & Network.deleted.is_(False))
        .order_by(Vlan.created_at, Vlan.id)
    )
    if dirty_only:
        query = query.where(
            or_(
                Vlan.status.in_((Status.PENDING.value, Status.DELETING.value)),
                Vlan.generation != Vlan.observed_generation,
                Vlan.id.in_(list(ids)),
            )
        )
    if names is not None:
        query = query.where(Vlan.vlan_id.in_(_vids_named(names)))
    work = [
        VlanWork(
            id=row.id,
            name=row.name,
            vid=row.vlan_id,
            backend=VlanBackend(row.backend),
            trunk_id=row.trunk_id,
            trunk=trunk,
            trunk_mtu=bridge_mtu(mtu),
            uplink=uplink,
            uplink_port=phase == UPLINK_ATTACHED,
            deleted=row.deleted,
            generation=row.generation,
            observed_generation=row.observed_generation,
            status=row.status,
            status_reason=row.status_reason,
            never_settled=row.observed_generation == 0,
            gateway=_gateway(gateway, subnet),
        )
        for row, trunk, mtu, uplink, phase, gateway, subnet in session.execute(query)
    ]
    if names is not None:
        wanted = set(names)
        work = [w for w in work if not wanted.isdisjoint(vlan_link_names(w))]
    return work


def _gateway(gateway: str | None, subnet: str | None) -> str | None:
    """`a.b.c.d/len`: the network's gateway with its subnet's prefix length."""
    if gateway is None or subnet is None:
        return None
    return f"{gateway}/{subnet.split('/')[1]}"


def _vids_named(names: Sequence[str]) -> list[int]:
    """The VIDs that end these link names (`.<vid>` or `v<vid>`): the only VLANs that can
    own a link of one of these names."""
    found = (_VID_SUFFIX.search(name) for name in names)
    return sorted({int(m.group(1)) for m in found if m is not None})


_VID_SUFFIX = re.compile(r"[.v]([0-9]{1,4})$")


def vlan_link_names(work: VlanWork) -> set[str]:
    """The names of the kernel links the VLAN owns now (vlan_link_specs): the one place
    that says which notifications concern a VLAN."""
    return {spec.name for spec in vlan_link_specs(work)}


def vlan_link_specs(work: VlanWork) -> list[LinkSpec]:
    """The kernel links a VLAN owns, as planner specs keyed by the VLAN's id (its mark is
    `kvmnetd:<kind>:<vlan id>`, so the orphan sweep and claims go by the VLAN): with the
    bridge_per_vlan backend its own bridge (fixed MAC, the trunk's MTU) and, once the trunk
    has an uplink, the uplink's 802.1Q sub-interface in that bridge. The filtering backend
    owns a link only while a managed network is on the VLAN: its L3 interface, the 802.1Q
    link `<bridge>.<vid>` on the trunk bridge (whose own port joins the VID tagged:
    l3_vids), planned deleted otherwise. A network's gateway is an address of the VLAN's L3
    interface."""
    specs: list[LinkSpec] = []
    addresses = (work.gateway,) if work.gateway is not None else ()
    bridge: str | None = None
    # created before the first success: a link of that name that lacks our mark can only
    # be our own interrupted create (the service refused a foreign holder of the name)
    intent = work.never_settled
    for obj in work.objects():
        if obj.kind is VlanObjectKind.BRIDGE:
            bridge = obj.name
            specs.append(
                LinkSpec(
                    id=work.id,
                    kind=LinkKind.BRIDGE,
                    name=obj.name,
                    mtu=work.trunk_mtu,
                    mac=vlan_bridge_mac(work.id),
                    deleted=work.deleted,
                    create_intent=intent,
                    addresses=addresses,
                )
            )
        elif obj.role is VlanObjectRole.UPLINK_SUBINTERFACE:
            specs.append(
                LinkSpec(
                    id=work.id,
                    kind=LinkKind.VLAN,
                    name=obj.name,
                    deleted=work.deleted,
                    create_intent=intent,
                    master=bridge,
                    parent=obj.parent,
                    options=VlanOptions(vid=work.vid),
                )
            )
    if work.backend is VlanBackend.VLAN_FILTERING:
        specs.append(_filtering_l3_spec(work, addresses))
    return specs


def _filtering_l3_spec(work: VlanWork, addresses: tuple[str, ...]) -> LinkSpec:
    """The filtering trunk's L3 interface on the VLAN: `ip link add link <bridge> name
    <bridge>.<vid> type vlan id <vid>` (Documentation/networking/switchdev.rst, "bridge
    VLAN" and 802.1Q upper devices), the trunk's MTU, carrying the gateway. Without a
    live network it is planned deleted (nothing to do once it is gone: FORGET), so it goes
    in the first pass after its network, even when the network's row went first."""
    return LinkSpec(
        id=work.id,
        kind=LinkKind.VLAN,
        name=subinterface_name(work.trunk, work.vid),
        mtu=work.trunk_mtu,
        deleted=work.deleted or work.gateway is None,
        create_intent=work.never_settled,
        parent=work.trunk,
        options=VlanOptions(vid=work.vid),
        addresses=addresses,
    )


def desired_port_vlans(session: Session, trunk_id: str, default_pvid: int = 1) -> BridgeVlans:
    """The VLAN membership a filtering trunk's ports should have, the ports we plan only:
    the uplink port carries every live VLAN of the trunk tagged, plus the bridge's
    `default_pvid` as its native VLAN (untagged traffic keeps flowing as before filtering);
    the bridge's own port keeps `default_pvid` (the host's address on the trunk itself) and
    joins, tagged, only the VLANs the host needs an address on (l3_vids);
    taps as app.db.repositories.port_vlans says. Other ports are not
    named, so they are never touched."""
    query = (
        select(Bridge.ifname, Uplink.name, Uplink.phase)
        .outerjoin(Uplink, (Uplink.bridge_id == Bridge.id) & Uplink.deleted.is_(False))
        .where(Bridge.id == trunk_id)
    )
    found = session.execute(query).first()
    if found is None:
        return {}
    trunk, uplink, phase = found
    vids = session.scalars(
        select(Vlan.vlan_id).where(
            Vlan.trunk_id == trunk_id,
            Vlan.deleted.is_(False),
            Vlan.backend == VlanBackend.VLAN_FILTERING.value,
        )
    ).all()
    native = default_pvid if default_pvid != DEFAULT_PVID_OFF and default_pvid not in vids else None
    desired: dict[str, dict[int, Membership]] = {
        trunk: {**on_join(default_pvid), **bridge_self(l3_vids(session, trunk_id))}
    }
    if uplink is not None and phase == UPLINK_ATTACHED:
        desired[uplink] = trunk_port(sorted(vids), native)
    desired.update(tap_port_vlans(session, trunk_id))
    return desired


def l3_vids(session: Session, trunk_id: str) -> list[int]:
    """The VIDs of the trunk's filtering VLANs on which the host needs an address (its
    `<bridge>.<vid>`): those that carry a live managed network."""
    query = (
        select(Vlan.vlan_id)
        .join(Network, Network.vlan_id == Vlan.id)
        .where(
            Vlan.trunk_id == trunk_id,
            Vlan.deleted.is_(False),
            Network.deleted.is_(False),
            Vlan.backend == VlanBackend.VLAN_FILTERING.value,
        )
        .order_by(Vlan.vlan_id)
    )
    return list(session.scalars(query))


def vlan_trunks(session: Session, filtering_only: bool = True) -> dict[str, str]:
    """Trunk bridge id -> kernel name of the trunks that carry VLANs (by default: with the
    filtering backend), deleted VLANs included until they are gone."""
    query = select(Bridge.id, Bridge.ifname).join(Vlan, Vlan.trunk_id == Bridge.id).distinct()
    if filtering_only:
        query = query.where(Vlan.backend == VlanBackend.VLAN_FILTERING.value)
    return {trunk_id: name for trunk_id, name in session.execute(query)}


def vlan_rows(session: Session, ids: Sequence[str]) -> dict[str, Vlan]:
    return {v.id: v for v in session.scalars(select(Vlan).where(Vlan.id.in_(list(ids))))}
