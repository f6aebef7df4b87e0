"""Bridges and taps: their rows, the planner's link specs, and what references them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import Session

from app.db.link_settings import stored_link_settings
from app.db.models import Bridge, Tap, Vlan, Vm, VmNic
from app.db.repositories.addresses import network_gateways
from app.db.repositories.base import LINK_MODELS, ResourceRepository
from app.db.repositories.port_vlans import port_master, vlan_masters
from app.db.repositories.uplinks import (
    UplinkMove,
    leaving_subinterface_specs,
    leaving_uplinks,
    uplink_moves,
    uplink_of,
    vlans_on_moving_uplinks,
)
from app.db.repositories.vlans import load_vlan_work, vlan_link_specs
from app.domain.links import LinkKind, LinkSpec, bridge_mtu, tap_mtu
from app.domain.status import Status

L = TypeVar("L", Bridge, Tap)


def journal_create_intents(session: Session, ids: Sequence[str]) -> None:
    """Mark these bridges and taps 'about to be created' (create_intent), so a crash between
    the kernel's create and the ownership mark is adopted at the next pass."""
    for model in LINK_MODELS:
        session.execute(update(model).where(model.id.in_(ids)).values(create_intent=True))


class TapRepository(ResourceRepository[Tap]):
    def __init__(self, session: Session) -> None:
        super().__init__(session, Tap)

    def on_bridge(self, bridge_id: str) -> Sequence[Tap]:
        return self.session.scalars(select(Tap).where(Tap.bridge_id == bridge_id)).all()


class BridgeRepository(ResourceRepository[Bridge]):
    def __init__(self, session: Session) -> None:
        super().__init__(session, Bridge)

    def with_ifname(self, ifname: str) -> Bridge | None:
        """The bridge (in any project, being deleted too) whose kernel name is `ifname`."""
        query = select(Bridge).where(Bridge.ifname == ifname).order_by(Bridge.created_at)
        return self.session.scalars(query).first()

    def macs(self) -> set[str]:
        """Every MAC a bridge keeps, pinned or generated."""
        taken: set[str] = set()
        for pinned, generated in self.session.execute(select(Bridge.mac, Bridge.generated_mac)):
            taken.update(m for m in (pinned, generated) if m)
        return taken


@dataclass(frozen=True)
class BridgeFacts:
    """A bridge as its taps' specs need it: kernel name and the MTU it keeps."""

    name: str
    mtu: int


def _link_spec(
    row: Bridge | Tap,
    bridges: dict[str, BridgeFacts],
    gateways: dict[str, str],
    uplinks: dict[str, UplinkMove],
) -> LinkSpec | str:
    """The planner's spec of a row, or why the row's stored settings cannot be used. A row
    being deleted needs only its name and index, so even a bad one can go."""
    settings, problem = stored_link_settings(row)
    if problem is not None and not row.deleted:
        return problem
    addresses = tuple(settings["addresses"])
    move = uplinks.get(row.id)
    for extra in (gateways.get(row.id), *(move.addresses if move else ())):
        if extra is not None and extra not in addresses:
            addresses += (extra,)
    common = LinkSpec(
        id=row.id,
        kind=LinkKind.BRIDGE,
        name=row.ifname,
        mtu=settings["mtu"],
        mac=settings["mac"],
        addresses=addresses,
        # a bridge goes only once its uplink moved the host's configuration back
        deleted=row.deleted and row.id not in uplinks,
        create_intent=row.create_intent,
        ifindex=row.observed_ifindex,
    )
    if isinstance(row, Bridge):
        return replace(
            common,
            mtu=bridges[row.id].mtu,
            # pinned, else the uplink NIC's (take_mac), else the one generated at creation
            mac=settings["mac"] or (move.mac if move else None) or row.generated_mac,
            stp=settings["stp"],
            forward_delay_cs=settings["forward_delay_cs"],
        )
    # on a VLAN: the VLAN's bridge (bridge_per_vlan) or its trunk (port_master)
    bridge = port_master(row.bridge_id, row.vlan_id, bridges)
    held = None
    if row.vlan_id is not None and bridge is None:
        held = (
            "on no bridge: its VLAN is in error (see the VLAN's status_reason) and a port "
            "of a VLAN never sits on the trunk untagged; it joins once the VLAN is active"
        )
    return replace(
        common,
        kind=LinkKind.TAP,
        mtu=tap_mtu(settings["mtu"], bridge.mtu if bridge else None),
        master=bridge.name if bridge else None,
        held=held,
        owner_uid=settings["owner_uid"],
        owner_gid=settings["owner_gid"],
        multi_queue=settings["multi_queue"],
        vnet_hdr=settings["vnet_hdr"],
        isolated=settings["isolated"],
    )


def _link_rows(
    session: Session,
    model: type[L],
    dirty_only: bool,
    names: list[str] | None,
    also_ids: list[str] | None,
) -> Sequence[L]:
    query = select(model)
    if dirty_only:
        query = query.where(
            or_(
                model.status.in_((Status.PENDING.value, Status.DELETING.value)),
                model.generation != model.observed_generation,
                model.id.in_(also_ids or []),
            )
        )
    if names is not None:  # kernel names
        query = query.where(model.ifname.in_(names))
    return session.scalars(query).all()


def _taps_to_follow(
    session: Session, bridges: dict[str, BridgeFacts], bridge_ids: list[str], loaded: set[str]
) -> Sequence[Tap]:
    """The taps on these bridges, not loaded yet, that have no MTU of their own and were
    last seen at another MTU than their bridge keeps now: they follow it."""
    follows = [
        and_(Tap.bridge_id == bridge_id, Tap.observed_mtu != bridges[bridge_id].mtu)
        for bridge_id in bridge_ids
    ]
    if not follows:
        return []
    query = select(Tap).where(Tap.mtu.is_(None), Tap.id.not_in(loaded), or_(*follows))
    return session.scalars(query).all()


@dataclass(frozen=True)
class ObservedState:
    """What a row said about the kernel when a pass loaded it."""

    generation: int
    observed_generation: int
    status: str
    ifindex: int | None
    mac: str | None
    mtu: int | None = None
    oper_state: str | None = None
    reason: str | None = None
    isolated: bool | None = None  # a tap's bridge port isolation flag as last read back

    @classmethod
    def of(cls, row: Bridge | Tap) -> ObservedState:
        return cls(
            row.generation,
            row.observed_generation,
            row.status,
            row.observed_ifindex,
            row.observed_mac,
            row.observed_mtu,
            row.observed_oper_state,
            row.status_reason,
            row.observed_isolated if isinstance(row, Tap) else None,
        )


def bridge_facts(session: Session, uplinks: dict[str, UplinkMove]) -> dict[str, BridgeFacts]:
    """Every bridge's kernel name and the MTU it keeps (one query), and under each VLAN's
    id the bridge its access ports join (vlan_masters; port_master picks a port's)."""
    query = select(Bridge.id, Bridge.ifname, Bridge.mtu)
    bridges = {
        bridge_id: BridgeFacts(
            name, bridge_mtu(mtu, uplinks[bridge_id].mtu if bridge_id in uplinks else None)
        )
        for bridge_id, name, mtu in session.execute(query)
    }
    return bridges | vlan_masters(session, bridges)


@dataclass
class LinkSpecs:
    """What one pass loaded: the specs, the state each row was in, and the rows whose
    stored settings cannot be used (id -> why), which the pass reports and leaves alone."""

    specs: list[LinkSpec]
    states: dict[str, ObservedState]
    unreadable: dict[str, str]
    # the VLANs whose links are among the specs (keyed by the VLAN's id): their outcomes
    # are recorded on the VLAN rows (app.supervisor.vlans), not on bridge or tap rows
    vlan_ids: set[str] = field(default_factory=set)


def load_link_specs(
    session: Session,
    dirty_only: bool = False,
    names: list[str] | None = None,
    also_ids: list[str] | None = None,
) -> LinkSpecs:
    """Bridges, taps and the links VLANs own as planner specs (all, the unsettled ones plus
    `also_ids`, or those named), with the state each row was in when loaded, plus the taps
    whose MTU follows a loaded bridge's and differs from it."""
    uplinks = uplink_moves(session)
    bridges_by_id = bridge_facts(session, uplinks)
    bridges = _link_rows(session, Bridge, dirty_only, names, also_ids)
    taps = list(_link_rows(session, Tap, dirty_only, names, also_ids))
    taps += _taps_to_follow(session, bridges_by_id, [b.id for b in bridges], {t.id for t in taps})
    rows: list[Bridge | Tap] = [*bridges, *taps]
    gateways = network_gateways(session)
    loaded = LinkSpecs([], {row.id: ObservedState.of(row) for row in rows}, {})
    for row in rows:
        spec = _link_spec(row, bridges_by_id, gateways, uplinks)
        if isinstance(spec, str):
            loaded.unreadable[row.id] = spec
        else:
            loaded.specs.append(spec)
    # an uplink being set or removed brings or takes the `<uplink>.<vid>` of the trunk's
    # bridge_per_vlan VLANs: they are looked at in the same pass
    vlan_ids = [*(also_ids or ()), *(vlans_on_moving_uplinks(session) if dirty_only else ())]
    leaving = leaving_uplinks(session)
    for vlan in load_vlan_work(session, dirty_only, vlan_ids, names):
        loaded.vlan_ids.add(vlan.id)
        loaded.states[vlan.id] = ObservedState(
            vlan.generation, vlan.observed_generation, vlan.status, None, None, reason=None
        )
        loaded.specs += vlan_link_specs(vlan)
        loaded.specs += leaving_subinterface_specs(
            vlan.id, vlan.trunk_id, vlan.vid, vlan.backend, leaving
        )
    return loaded


def link_rows(session: Session, ids: list[str]) -> dict[str, Bridge | Tap]:
    """Bridge and tap rows by id, two queries whatever the count."""
    rows: dict[str, Bridge | Tap] = {
        b.id: b for b in session.scalars(select(Bridge).where(Bridge.id.in_(ids)))
    }
    rows.update({t.id: t for t in session.scalars(select(Tap).where(Tap.id.in_(ids)))})
    return rows


def link_referrers(session: Session, row: Bridge | Tap) -> list[str]:
    """What still references a link row in the database (any VM, deleted or not): while
    anything does, the row must stay (foreign keys), even though the kernel link is gone."""
    if isinstance(row, Bridge):
        nic_column, tap_refs = VmNic.bridge_id, select(Tap.name).where(Tap.bridge_id == row.id)
        taps = [f"tap {name}" for name in session.scalars(tap_refs)]
        uplink = uplink_of(session, row.id)
        taps += [f"uplink {uplink.name}"] if uplink is not None else []
        # a VLAN row (even one being deleted) goes first: its removal releases its name
        # claims, which the foreign key's CASCADE would otherwise leave behind
        vlans = select(Vlan.name).where(Vlan.trunk_id == row.id).order_by(Vlan.name)
        taps += [f"vlan {name}" for name in session.scalars(vlans)]
    else:
        nic_column, taps = VmNic.tap_id, []
    query = (
        select(Vm.name, VmNic.position)
        .join(Vm, Vm.id == VmNic.vm_id)
        .where(nic_column == row.id)
        .order_by(Vm.name, VmNic.position)
    )
    return [*taps, *(f"vm_nic {vm}/{pos}" for vm, pos in session.execute(query))]


@dataclass(frozen=True)
class HeldPorts:
    """The ports waiting on masters that became usable again: our tap resources that do not
    say `active` without a reason (held off their master, blocked, failed or backing off),
    and the VMs (not being deleted) with a NIC on one of those masters."""

    taps: dict[str, str]  # tap id -> kernel name
    vm_ids: set[str]


def held_ports(session: Session, bridge_ids: Sequence[str], vlan_ids: Sequence[str]) -> HeldPorts:
    """The ports of these bridges (as their own bridge, not through a VLAN on them) and of
    these VLANs, as `HeldPorts` says (two queries)."""
    if not bridge_ids and not vlan_ids:
        return HeldPorts({}, set())

    def on_masters(bridge: Any, vlan: Any) -> ColumnElement[bool]:
        return or_(and_(bridge.in_(bridge_ids), vlan.is_(None)), vlan.in_(vlan_ids))

    unsettled = or_(Tap.status != Status.ACTIVE.value, Tap.status_reason.is_not(None))
    taps = select(Tap.id, Tap.ifname).where(
        on_masters(Tap.bridge_id, Tap.vlan_id), Tap.deleted.is_(False), unsettled
    )
    vms = (
        select(VmNic.vm_id)
        .join(Vm, Vm.id == VmNic.vm_id)
        .where(on_masters(VmNic.bridge_id, VmNic.vlan_id), Vm.deleted.is_(False))
    )
    return HeldPorts(
        {tap_id: name for tap_id, name in session.execute(taps)}, set(session.scalars(vms))
    )
