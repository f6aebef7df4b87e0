"""Repositories: the only place that builds queries. Generic paging plus link-specific reads."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any, Generic, TypeVar, cast

from sqlalchemy import (
    ColumnElement,
    Table,
    and_,
    bindparam,
    delete,
    func,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.orm import Session

from app.db.models import (
    Base,
    Bridge,
    EventSequence,
    HostPort,
    LinkName,
    Network,
    Operation,
    Tap,
    Uplink,
    Vm,
    VmNic,
)
from app.db.models import PortForward as PortForwardRow
from app.domain.cursors import decode_cursor, encode_cursor
from app.domain.links import LinkKind, LinkSpec, bridge_mtu, tap_mtu
from app.domain.nat_rules import Forward, NatNetwork
from app.domain.networks import AddressHolder, DhcpDnsSpec, NicAddress, static_hosts
from app.domain.nics import load_options
from app.domain.path_probe import ProbeTarget
from app.domain.status import Status
from app.domain.stored import BRIDGE_RULES, TAP_RULES, read_link_settings
from app.domain.uplinks import JournalError, NicConfig
from app.domain.vms import Accelerator, BootSpec, Machine, NicSpec, Vhost, VmSpec

M = TypeVar("M", bound=Base)
UUID_LENGTH = 36
WILDCARD = "0.0.0.0"
R = TypeVar("R", Bridge, Tap, Vm, Network, PortForwardRow)


class Repository(Generic[M]):
    def __init__(self, session: Session, model: type[M]) -> None:
        self.session = session
        self.model = model

    def get(self, row_id: str) -> M | None:
        return self.session.get(self.model, row_id)

    def add(self, row: M) -> M:
        self.session.add(row)
        return row


class ResourceRepository(Repository[R]):
    """Bridges and taps: lookup by id or name, keyset paging in creation order."""

    def get_by_name(self, name: str) -> R | None:
        model = self.model
        return self.session.scalars(select(model).where(model.name == name)).first()

    def find(self, ref: str) -> R | None:
        """By id, else by name (OpenStack-style clients pass either). A valid link name is
        never 36 characters long, so only a UUID-shaped ref can be an id."""
        if len(ref) == UUID_LENGTH:
            found = self.get(ref)
            if found is not None:
                return found
        return self.get_by_name(ref)

    def page(self, limit: int, cursor: str | None) -> tuple[Sequence[R], str | None]:
        model = self.model
        query = select(model).order_by(model.created_at, model.id).limit(limit + 1)
        if cursor is not None:  # "" too is a cursor, and not one of ours
            created, row_id = decode_cursor(cursor)
            query = query.where(tuple_(model.created_at, model.id) > tuple_(created, row_id))
        rows = self.session.scalars(query).all()
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if more else None
        return rows, next_cursor


class TapRepository(ResourceRepository[Tap]):
    def __init__(self, session: Session) -> None:
        super().__init__(session, Tap)

    def on_bridge(self, bridge_id: str) -> Sequence[Tap]:
        return self.session.scalars(select(Tap).where(Tap.bridge_id == bridge_id)).all()


class BridgeRepository(ResourceRepository[Bridge]):
    def __init__(self, session: Session) -> None:
        super().__init__(session, Bridge)

    def macs(self) -> set[str]:
        """Every MAC a bridge keeps, pinned or generated."""
        taken: set[str] = set()
        for pinned, generated in self.session.execute(select(Bridge.mac, Bridge.generated_mac)):
            taken.update(m for m in (pinned, generated) if m)
        return taken


class VmRepository(ResourceRepository[Vm]):
    def __init__(self, session: Session) -> None:
        super().__init__(session, Vm)

    def name_holder(self, name: str) -> Vm | None:
        """The VM whose name equals `name` without regard to case (RFC 4343: host names are
        case-insensitive; VM names are ASCII, which SQLite's lower() folds)."""
        query = select(Vm).where(func.lower(Vm.name) == name.lower()).order_by(Vm.created_at)
        return self.session.scalars(query).first()

    def nics(self, vm_id: str) -> Sequence[VmNic]:
        query = select(VmNic).where(VmNic.vm_id == vm_id).order_by(VmNic.position)
        return self.session.scalars(query).all()


class NetworkRepository(ResourceRepository[Network]):
    def __init__(self, session: Session) -> None:
        super().__init__(session, Network)

    def on_link(self, bridge_id: str | None, tap_id: str | None) -> Network | None:
        """The network on this bridge or tap (deleted or not)."""
        column, value = (Network.bridge_id, bridge_id) if bridge_id else (Network.tap_id, tap_id)
        return self.session.scalars(select(Network).where(column == value)).first()

    def subnets(self, except_id: str | None = None) -> list[tuple[str, str]]:
        """(name, subnet) of every network but one."""
        query = select(Network.name, Network.subnet).where(Network.id != (except_id or ""))
        return [(name, subnet) for name, subnet in self.session.execute(query)]

    def nics(self, network_id: str) -> Sequence[VmNic]:
        return self.session.scalars(select(VmNic).where(VmNic.network_id == network_id)).all()

    def live_subnets(self) -> list[tuple[str, str]]:
        """(name, subnet) of every network not being deleted."""
        query = select(Network.name, Network.subnet).where(Network.deleted.is_(False))
        return [(name, subnet) for name, subnet in self.session.execute(query)]

    def own_addresses(self) -> dict[str, list[str]]:
        return own_addresses(self.session)

    def gateways(self) -> list[str]:
        query = select(Network.gateway).where(Network.deleted.is_(False))
        return list(self.session.scalars(query))

    def taken_addresses(self, network_id: str) -> set[str]:
        query = select(VmNic.ipv4).where(VmNic.network_id == network_id, VmNic.ipv4.is_not(None))
        return {address for address in self.session.scalars(query) if address}

    def nics_on_link(self, bridge_id: str | None, tap_id: str | None) -> Sequence[VmNic]:
        column, value = (VmNic.bridge_id, bridge_id) if bridge_id else (VmNic.tap_id, tap_id)
        return self.session.scalars(select(VmNic).where(column == value)).all()


class PortForwardRepository(ResourceRepository[PortForwardRow]):
    def __init__(self, session: Session) -> None:
        super().__init__(session, PortForwardRow)

    def of_network(self, network_id: str) -> Sequence[PortForwardRow]:
        query = select(PortForwardRow).where(PortForwardRow.network_id == network_id)
        return self.session.scalars(query).all()

    def names(self) -> set[str]:
        return set(self.session.scalars(select(PortForwardRow.name)))

    def to_nics(self, nic_ids: Sequence[str]) -> Sequence[PortForwardRow]:
        query = select(PortForwardRow).where(PortForwardRow.vm_nic_id.in_(nic_ids))
        return self.session.scalars(query).all()


class HostPortRepository(Repository[HostPort]):
    """Host port claims: user-networking forwards of VM NICs and networks' port forwards."""

    def __init__(self, session: Session) -> None:
        super().__init__(session, HostPort)

    def all(self) -> Sequence[HostPort]:
        return self.session.scalars(select(HostPort)).all()

    def overlapping(
        self, protocol: str, address: str, port: int, end_port: int
    ) -> Sequence[HostPort]:
        """Claims overlapping these ports on this address (0.0.0.0 overlaps every address)."""
        last = func.coalesce(HostPort.end_port, HostPort.port)
        query = select(HostPort).where(
            HostPort.protocol == protocol, HostPort.port <= end_port, last >= port
        )
        if address != WILDCARD:
            query = query.where(HostPort.address.in_((address, WILDCARD)))
        return self.session.scalars(query).all()

    def release(self, owner_ids: Sequence[str]) -> None:
        self.session.execute(delete(HostPort).where(HostPort.owner_id.in_(owner_ids)))


def uplink_of(session: Session, bridge_id: str) -> Uplink | None:
    return session.scalars(select(Uplink).where(Uplink.bridge_id == bridge_id)).first()


def uplinks_of(session: Session, bridge_ids: Sequence[str]) -> dict[str, Uplink]:
    """Bridge id -> its uplink, for the bridges that have one (one query)."""
    query = select(Uplink).where(Uplink.bridge_id.in_(bridge_ids))
    return {row.bridge_id: row for row in session.scalars(query)}


class LinkNameRepository(Repository[LinkName]):
    def __init__(self, session: Session) -> None:
        super().__init__(session, LinkName)

    def release(self, resource_id: str) -> None:
        self.session.execute(delete(LinkName).where(LinkName.resource_id == resource_id))


@dataclass(frozen=True)
class FinishedOperation:
    """A resource reached `generation` (status succeeded) or failed at it."""

    resource_id: str
    generation: int
    status: str
    error: str | None = None


class OperationRepository(Repository[Operation]):
    def __init__(self, session: Session) -> None:
        super().__init__(session, Operation)

    def prune(self, finished_before: dt.datetime) -> int:
        """Forget operations that ended before the given time; returns how many."""
        result = self.session.execute(
            delete(Operation).where(
                Operation.status != "running", Operation.finished_at < finished_before
            )
        )
        return int(getattr(result, "rowcount", 0) or 0)

    def finish(self, outcomes: list[FinishedOperation]) -> None:
        """Close the running operations that these outcomes satisfy: one UPDATE statement
        run for all of them (executemany), whatever their number."""
        if not outcomes:
            return
        table = cast(Table, Operation.__table__)
        statement = (
            update(table)
            .where(
                table.c.resource_id == bindparam("rid"),
                table.c.status == "running",
                table.c.target_generation <= bindparam("generation"),
            )
            .values(
                status=bindparam("new_status"),
                error=bindparam("error"),
                finished_at=bindparam("now"),
            )
        )
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)  # the column stores naive UTC
        self.session.connection().execute(
            statement,
            [
                {
                    "rid": o.resource_id,
                    "generation": o.generation,
                    "new_status": o.status,
                    "error": o.error,
                    "now": now,
                }
                for o in outcomes
            ],
        )


@dataclass(frozen=True)
class UplinkMove:
    """What an uplink that moved (or is moving) the host's configuration onto a bridge
    imposes on it: the NIC's addresses, its MAC (with take_mac) and its MTU."""

    addresses: tuple[str, ...] = ()
    mac: str | None = None
    mtu: int | None = None


@dataclass(frozen=True)
class BridgeFacts:
    """A bridge as its taps' specs need it: kernel name and the MTU it keeps."""

    name: str
    mtu: int


def stored_link_settings(row: Bridge | Tap) -> tuple[dict[str, Any], str | None]:
    """The row's link settings as the workers and the API may use them (each value that
    cannot be used replaced by its default), and what was wrong with the stored ones."""
    names = BRIDGE_RULES if isinstance(row, Bridge) else TAP_RULES
    return read_link_settings(
        {name: getattr(row, name) for name in names}, is_bridge=isinstance(row, Bridge)
    )


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
        name=row.name,
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
    bridge = bridges.get(row.bridge_id) if row.bridge_id else None
    return replace(
        common,
        kind=LinkKind.TAP,
        mtu=tap_mtu(settings["mtu"], bridge.mtu if bridge else None),
        master=bridge.name if bridge else None,
        owner_uid=settings["owner_uid"],
        owner_gid=settings["owner_gid"],
        multi_queue=settings["multi_queue"],
        vnet_hdr=settings["vnet_hdr"],
    )


LINK_MODELS: tuple[type[Bridge], type[Tap]] = (Bridge, Tap)


def _link_rows(
    session: Session,
    model: type[R],
    dirty_only: bool,
    names: list[str] | None,
    also_ids: list[str] | None,
) -> Sequence[R]:
    query = select(model)
    if dirty_only:
        query = query.where(
            or_(
                model.status.in_((Status.PENDING.value, Status.DELETING.value)),
                model.generation != model.observed_generation,
                model.id.in_(also_ids or []),
            )
        )
    if names is not None:
        query = query.where(model.name.in_(names))
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
        )


def bridge_facts(session: Session, uplinks: dict[str, UplinkMove]) -> dict[str, BridgeFacts]:
    """Every bridge's kernel name and the MTU it keeps (one query)."""
    query = select(Bridge.id, Bridge.name, Bridge.mtu)
    return {
        bridge_id: BridgeFacts(
            name, bridge_mtu(mtu, uplinks[bridge_id].mtu if bridge_id in uplinks else None)
        )
        for bridge_id, name, mtu in session.execute(query)
    }


@dataclass
class LinkSpecs:
    """What one pass loaded: the specs, the state each row was in, and the rows whose
    stored settings cannot be used (id -> why), which the pass reports and leaves alone."""

    specs: list[LinkSpec]
    states: dict[str, ObservedState]
    unreadable: dict[str, str]


def load_link_specs(
    session: Session,
    dirty_only: bool = False,
    names: list[str] | None = None,
    also_ids: list[str] | None = None,
) -> LinkSpecs:
    """Bridges and taps as planner specs (all, the unsettled ones plus `also_ids`, or those
    named), with the state each row was in when loaded, plus the taps whose MTU follows a
    loaded bridge's and differs from it."""
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
    return loaded


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


@dataclass(frozen=True)
class NicObservation:
    """A changed observation of the address a NIC's MAC holds on a network."""

    network_id: str
    nic: NicAddress
    observed_ipv4: str | None
    reason: str | None

    @property
    def nic_id(self) -> str:
        return self.nic.nic_id

    def event_data(self) -> dict[str, object]:
        return {
            "vm": self.nic.vm,
            "nic": self.nic.position,
            "mac": self.nic.mac,
            "ipv4": self.nic.fixed,
            "observed_ipv4": self.observed_ipv4,
            "address_status_reason": self.reason,
        }


def record_nic_addresses(session: Session, observations: Sequence[NicObservation]) -> None:
    """The address each NIC's MAC holds (from the lease file) and why it is wrong, if so."""
    for o in observations:
        nic = session.get(VmNic, o.nic_id)
        if nic is not None:
            nic.observed_ipv4, nic.address_status_reason = o.observed_ipv4, o.reason


def network_gateways(session: Session) -> dict[str, str]:
    """Link id -> the gateway address (with prefix) its managed network puts on it."""
    query = select(Network.bridge_id, Network.tap_id, Network.gateway, Network.subnet).where(
        Network.deleted.is_(False)
    )
    result: dict[str, str] = {}
    for bridge_id, tap_id, gateway, subnet in session.execute(query):
        result[bridge_id or tap_id or ""] = f"{gateway}/{subnet.split('/')[1]}"
    return result


def own_addresses(session: Session) -> dict[str, list[str]]:
    """Link name -> the IPv4 addresses (`a.b.c.d/len`) kvmnetd itself puts on it: a bridge's
    or tap's `addresses` and its network's gateway (not what an uplink moved onto a bridge:
    those are the LAN's)."""
    gateways = network_gateways(session)
    result: dict[str, list[str]] = {}
    for model in LINK_MODELS:
        for row_id, name, addresses in session.execute(
            select(model.id, model.name, model.addresses)
        ):
            own = _stored_ipv4(addresses)
            if row_id in gateways:
                own.append(gateways[row_id])
            result[name] = own
    return result


def vms_by_mac(session: Session, network_id: str) -> dict[str, tuple[str, str | None]]:
    """MAC -> (VM name, fixed address) of the NICs on a network."""
    query = (
        select(VmNic.mac, Vm.name, VmNic.ipv4)
        .join(Vm, Vm.id == VmNic.vm_id)
        .where(VmNic.network_id == network_id)
    )
    return {mac: (name, ipv4) for mac, name, ipv4 in session.execute(query)}


def link_rows(session: Session, ids: list[str]) -> dict[str, Bridge | Tap]:
    """Bridge and tap rows by id, two queries whatever the count."""
    rows: dict[str, Bridge | Tap] = {
        b.id: b for b in session.scalars(select(Bridge).where(Bridge.id.in_(ids)))
    }
    rows.update({t.id: t for t in session.scalars(select(Tap).where(Tap.id.in_(ids)))})
    return rows


def vm_spec(vm: Vm, nics: Sequence[VmNic]) -> VmSpec:
    """A VM and its NICs as the domain's spec (what the qemu command line is built from)."""
    return VmSpec(
        id=vm.id,
        name=vm.name,
        vcpus=vm.vcpus,
        memory_mib=vm.memory_mib,
        machine=Machine(vm.machine),
        accelerator=Accelerator(vm.accelerator),
        boot=BootSpec(**vm.boot),
        nics=tuple(_nic_spec(nic) for nic in sorted(nics, key=lambda n: n.position)),
    )


def _nic_spec(nic: VmNic) -> NicSpec:
    """The NIC as the domain's spec; its backend's driver reads the stored `options`."""
    spec = NicSpec(
        id=nic.id,
        model=nic.model,
        mac=nic.mac,
        backend=nic.backend,
        tap=nic.tap_name,
        queues=nic.queues,
        vhost=Vhost(nic.vhost),
        link_up=nic.link_up,
        mtu=nic.mtu,
    )
    return load_options(spec, nic.options)


# ---- what the network worker reconciles -----------------------------------------------------


@dataclass(frozen=True)
class RowState:
    """A network's or forward's bookkeeping as loaded at the start of a pass."""

    id: str
    name: str
    deleted: bool
    generation: int
    observed_generation: int
    status: str
    status_reason: str | None


@dataclass(frozen=True)
class NetworkState:
    row: RowState
    link_name: str | None
    link_problem: str | None  # why the link is not ready yet (None: it is)
    nat: NatNetwork
    service: DhcpDnsSpec
    dnsmasq_pid: int | None
    restarts: int
    nics: tuple[NicAddress, ...] = ()  # the fixed addresses of live VMs' NICs
    unreadable: bool = False  # link_problem says why; nothing of it is touched


@dataclass(frozen=True)
class ForwardState:
    row: RowState
    spec: Forward | None  # None: its target NIC lost its address, or it is withheld
    nic_id: str | None = None
    withheld: str | None = None  # why its rule is left out (its target holds another address)


def _row_state(row: Network | PortForwardRow) -> RowState:
    return RowState(
        row.id,
        row.name,
        row.deleted,
        row.generation,
        row.observed_generation,
        row.status,
        row.status_reason,
    )


def _link_problem(link: Bridge | Tap | None) -> str | None:
    if link is None:
        return "its link is gone"
    if link.status == Status.ACTIVE.value and link.observed_generation == link.generation:
        return None
    kind = "bridge" if isinstance(link, Bridge) else "tap"
    detail = f": {link.status_reason}" if link.status_reason else ""
    return f"waiting for {kind} {link.name} ({link.status}{detail})"


def _network_state(session: Session, row: Network) -> NetworkState:
    link: Bridge | Tap | None = (
        session.get(Bridge, row.bridge_id) if row.bridge_id else session.get(Tap, row.tap_id or "")
    )
    nics = session.execute(
        select(
            Vm.name,
            VmNic.mac,
            VmNic.ipv4,
            VmNic.position,
            VmNic.id,
            VmNic.observed_ipv4,
            VmNic.address_status_reason,
        )
        .join(Vm, Vm.id == VmNic.vm_id)
        .where(VmNic.network_id == row.id, VmNic.ipv4.is_not(None), Vm.deleted.is_(False))
        .order_by(Vm.created_at, Vm.id, VmNic.position)  # oldest VM first: it keeps its name
    ).all()
    service = DhcpDnsSpec(
        network_id=row.id,
        interface=link.name if link is not None else "",
        subnet=row.subnet,
        gateway=row.gateway,
        dhcp=row.dhcp,
        range_start=IPv4Address(row.range_start),
        range_end=IPv4Address(row.range_end),
        lease_seconds=row.lease_seconds,
        domain=row.domain,
        hosts=static_hosts((name, mac, ipv4 or "", pos) for name, mac, ipv4, pos, *_ in nics),
    )
    addresses = tuple(
        NicAddress(nic_id, name, pos, mac, ipv4 or "", observed, reason)
        for name, mac, ipv4, pos, nic_id, observed, reason in nics
    )
    nat = NatNetwork(row.id, row.subnet, row.nat, row.nat_interface, row.snat_address)
    return NetworkState(
        _row_state(row),
        link.name if link is not None else None,
        _link_problem(link),
        nat,
        service,
        row.dnsmasq_pid,
        row.restarts,
        addresses,
    )


def _unreadable_network(row: Network, exc: Exception) -> NetworkState:
    """A network whose stored settings cannot be used: no link, so the worker reports the
    reason on it (and leaves its dnsmasq and rules alone until it is fixed or deleted)."""
    problem = f"stored settings cannot be used: {type(exc).__name__}: {exc}"
    return NetworkState(
        _row_state(row),
        None,
        problem[:1000],
        NatNetwork(row.id, "0.0.0.0/32", False, None, None),
        DhcpDnsSpec(
            network_id=row.id,
            interface="",
            subnet="0.0.0.0/32",
            gateway="0.0.0.0",
            dhcp=False,
            range_start=IPv4Address("0.0.0.0"),
            range_end=IPv4Address("0.0.0.0"),
            lease_seconds=0,
            domain=None,
            hosts=(),
        ),
        None,
        0,
        unreadable=True,
    )


def load_network_state(session: Session) -> tuple[list[NetworkState], list[ForwardState]]:
    """Every network and port forward, as the network worker needs them (forwards as plain
    rows joined with their target's address: thousands of them load in milliseconds)."""
    networks = []
    for network in session.scalars(select(Network)):
        try:
            networks.append(_network_state(session, network))
        except (ValueError, TypeError, AttributeError) as exc:
            # a row written by hand or by an older version: reported on that network
            networks.append(_unreadable_network(network, exc))
    f = PortForwardRow
    query = select(
        f.id,
        f.name,
        f.deleted,
        f.generation,
        f.observed_generation,
        f.status,
        f.status_reason,
        f.protocol,
        f.listen_address,
        f.port,
        f.end_port,
        f.target_port,
        VmNic.ipv4,
        f.vm_nic_id,
    ).outerjoin(VmNic, VmNic.id == f.vm_nic_id)
    forwards = []
    for row in session.execute(query):
        (row_id, name, deleted, generation, observed, status, reason) = row[:7]
        protocol, listen, port, end_port, target_port, target, nic_id = row[7:]
        spec = (
            Forward(row_id, protocol, listen, port, end_port, target, target_port)
            if target
            else None
        )
        state = RowState(row_id, name, deleted, generation, observed, status, reason)
        forwards.append(ForwardState(state, spec, nic_id))
    return networks, forwards


def record_forward_outcomes(session: Session, outcomes: list[ForwardOutcome]) -> None:
    """Write many forwards' observed state with one statement (executemany). A row whose
    generation moved on since the pass loaded it is left alone: the next pass handles it."""
    if not outcomes:
        return
    table = cast(Table, PortForwardRow.__table__)
    statement = (
        update(table)
        .where(table.c.id == bindparam("rid"), table.c.generation == bindparam("loaded"))
        .values(
            status=bindparam("new_status"),
            status_reason=bindparam("reason"),
            observed_generation=bindparam("observed"),
            updated_at=bindparam("now"),
        )
    )
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    session.connection().execute(
        statement,
        [
            {
                "rid": o.id,
                "loaded": o.loaded_generation,
                "new_status": o.status,
                "reason": o.reason,
                "observed": o.observed_generation,
                "now": now,
            }
            for o in outcomes
        ],
    )


def remove_forwards(session: Session, ids: list[str]) -> None:
    """Forget deleted forwards (their rules are gone) and release their host ports."""
    if ids:
        session.execute(delete(HostPort).where(HostPort.owner_id.in_(ids)))
        session.execute(
            delete(PortForwardRow).where(PortForwardRow.id.in_(ids), PortForwardRow.deleted)
        )


@dataclass(frozen=True)
class ForwardOutcome:
    id: str
    loaded_generation: int
    status: str
    reason: str | None
    observed_generation: int


def orphan_forward_claims(session: Session) -> None:
    """Host port claims of forwards that no longer exist (their VM took them along)."""
    session.execute(
        delete(HostPort).where(
            HostPort.owner == "port_forward",
            HostPort.owner_id.not_in(select(PortForwardRow.id)),
        )
    )


def reserve_event_ids(session: Session, count: int, minimum: int) -> int:
    """Reserves `count` event ids no run has used, the first of them >= `minimum`; returns the
    first. The row's update is part of the caller's transaction (a write unit of work)."""
    row = session.get(EventSequence, 1)
    if row is None:
        row = EventSequence(id=1, next_id=1)
        session.add(row)
    start = max(row.next_id, minimum)
    row.next_id = start + count
    session.flush()
    return start


def probe_targets(session: Session) -> list[ProbeTarget]:
    """The live managed networks, as the path probe needs them (app.domain.path_probe)."""
    query = (
        select(Network, Bridge)
        .outerjoin(Bridge, Network.bridge_id == Bridge.id)
        .where(Network.deleted.is_(False))
        .order_by(Network.name)
    )
    return [
        ProbeTarget(
            network_id=network.id,
            network=network.name,
            bridge=bridge.name if bridge is not None else None,
            gateway=network.gateway,
            prefixlen=IPv4Network(network.subnet).prefixlen,
            dhcp=network.dhcp,
            stp_forward_delay_s=bridge.forward_delay_cs / 100 if bridge and bridge.stp else 0.0,
        )
        for network, bridge in session.execute(query)
    ]


# ---- in-use protection: what depends on a resource ------------------------------------------


class DependentsRepository:
    """The rows that keep a bridge, tap, network or VM from being deleted (see
    app.domain.dependents for the graph). NICs of VMs on their way out do not count: they go
    with their VM."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def _live_nics(self, *where: ColumnElement[bool]) -> list[tuple[VmNic, Vm]]:
        query = (
            select(VmNic, Vm)
            .join(Vm, Vm.id == VmNic.vm_id)
            .where(Vm.deleted.is_(False), *where)
            .order_by(Vm.name, VmNic.position)
        )
        return [(nic, vm) for nic, vm in self.session.execute(query)]

    def nics_on_bridge(self, bridge_id: str) -> list[tuple[VmNic, Vm]]:
        return self._live_nics(VmNic.bridge_id == bridge_id)

    def nics_on_tap(self, tap_id: str) -> list[tuple[VmNic, Vm]]:
        return self._live_nics(VmNic.tap_id == tap_id)

    def nics_on_network(self, network_id: str) -> list[tuple[VmNic, Vm]]:
        return self._live_nics(VmNic.network_id == network_id)

    def socket_peers(self, vm_id: str) -> list[tuple[VmNic, Vm]]:
        """NICs of other live VMs that connect to one of this VM's listening socket NICs
        (matched by the loopback port the listener claimed)."""
        sockets = self._live_nics(VmNic.backend == "socket")
        listening = {
            int(options["port"])
            for nic, _ in sockets
            if nic.vm_id == vm_id
            and (options := (nic.options or {}).get("socket") or {}).get("mode") == "listen"
        }
        return [
            (nic, vm)
            for nic, vm in sockets
            if nic.vm_id != vm_id
            and (options := (nic.options or {}).get("socket") or {}).get("mode") == "connect"
            and int(options.get("port") or 0) in listening
        ]

    def forwards_to_vm(self, vm_id: str) -> Sequence[PortForwardRow]:
        query = (
            select(PortForwardRow)
            .join(VmNic, VmNic.id == PortForwardRow.vm_nic_id)
            .where(VmNic.vm_id == vm_id, PortForwardRow.deleted.is_(False))
            .order_by(PortForwardRow.name)
        )
        return self.session.scalars(query).all()

    def forwards_to_nic(self, nic_id: str) -> Sequence[PortForwardRow]:
        query = select(PortForwardRow).where(PortForwardRow.vm_nic_id == nic_id)
        return self.session.scalars(query).all()

    def forwards_on_network(self, network_id: str) -> Sequence[PortForwardRow]:
        query = (
            select(PortForwardRow)
            .where(PortForwardRow.network_id == network_id, PortForwardRow.deleted.is_(False))
            .order_by(PortForwardRow.name)
        )
        return self.session.scalars(query).all()

    def taps_on_bridge(self, bridge_id: str) -> Sequence[Tap]:
        query = select(Tap).where(Tap.bridge_id == bridge_id, Tap.deleted.is_(False))
        return self.session.scalars(query.order_by(Tap.name)).all()

    def remove_nic(self, nic: VmNic) -> None:
        """A NIC leaves its VM: its forwards and host port claims go with it, and the VM's
        other NICs are renumbered to stay 0..n-1 (qemu's device ids follow that order)."""
        forward_ids = [f.id for f in self.forwards_to_nic(nic.id)]
        owners = [nic.id, *forward_ids]
        self.session.execute(delete(HostPort).where(HostPort.owner_id.in_(owners)))
        if forward_ids:
            self.session.execute(delete(PortForwardRow).where(PortForwardRow.id.in_(forward_ids)))
        vm_id = nic.vm_id
        self.session.delete(nic)
        self.session.flush()
        remaining = self.session.scalars(
            select(VmNic).where(VmNic.vm_id == vm_id).order_by(VmNic.position)
        ).all()
        for position, other in enumerate(remaining):
            other.position = position


def link_referrers(session: Session, row: Bridge | Tap) -> list[str]:
    """What still references a link row in the database (any VM, deleted or not): while
    anything does, the row must stay (foreign keys), even though the kernel link is gone."""
    if isinstance(row, Bridge):
        nic_column, tap_refs = VmNic.bridge_id, select(Tap.name).where(Tap.bridge_id == row.id)
        taps = [f"tap {name}" for name in session.scalars(tap_refs)]
        uplink = uplink_of(session, row.id)
        taps += [f"uplink {uplink.name}"] if uplink is not None else []
    else:
        nic_column, taps = VmNic.tap_id, []
    query = (
        select(Vm.name, VmNic.position)
        .join(Vm, Vm.id == VmNic.vm_id)
        .where(nic_column == row.id)
        .order_by(Vm.name, VmNic.position)
    )
    return [*taps, *(f"vm_nic {vm}/{pos}" for vm, pos in session.execute(query))]


def network_referrers(session: Session, network_id: str) -> list[str]:
    """Port forwards that still reference a network row (their foreign key restricts)."""
    query = select(PortForwardRow.name).where(PortForwardRow.network_id == network_id)
    return [f"port_forward {name}" for name in session.scalars(query)]


def _stored_ipv4(addresses: object) -> list[str]:
    """The usable IPv4 addresses (`a.b.c.d/len`) of a stored `addresses` column (a row
    written by hand may hold anything: app.domain.stored reports it on the row)."""
    found = []
    for text in addresses if isinstance(addresses, list) else ():
        try:
            found.append(str(IPv4Interface(text)))
        except (ValueError, TypeError):
            continue
    return found


def address_holders(session: Session, exclude_link_id: str | None = None) -> list[AddressHolder]:
    """Every IPv4 address kvmnetd has given out (app.domain.networks.AddressHolder): live
    networks' gateways, VM NICs' fixed addresses, and the addresses of live bridges and
    taps other than `exclude_link_id` (the link being checked)."""
    names: dict[str, tuple[str, str]] = {}
    held: list[AddressHolder] = []
    for model, kind in ((Bridge, "bridge"), (Tap, "tap")):
        query = select(model.id, model.name, model.addresses, model.deleted)
        for row_id, name, addresses, deleted in session.execute(query):
            names[row_id] = (kind, name)
            if deleted or row_id == exclude_link_id:
                continue
            held += [AddressHolder(kind, name, name, a) for a in _stored_ipv4(addresses)]
    networks = select(
        Network.name, Network.bridge_id, Network.tap_id, Network.gateway, Network.subnet
    ).where(Network.deleted.is_(False))
    for name, bridge_id, tap_id, gateway, subnet in session.execute(networks):
        link = names.get(bridge_id or tap_id or "", ("", "?"))[1]
        held.append(AddressHolder("network", name, link, f"{gateway}/{subnet.split('/')[1]}"))
    nics = (
        select(Vm.name, VmNic.position, VmNic.bridge_id, VmNic.tap_id, VmNic.ipv4)
        .join(Vm, Vm.id == VmNic.vm_id)
        .where(VmNic.ipv4.is_not(None))
    )
    for vm, position, bridge_id, tap_id, ipv4 in session.execute(nics):
        link = names.get(bridge_id or tap_id or "", ("", "?"))[1]
        held.append(AddressHolder("vm_nic", f"VM {vm!r} NIC {position}", link, f"{ipv4}/32"))
    return held
