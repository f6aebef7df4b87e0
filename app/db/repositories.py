"""Repositories: the only place that builds queries. Generic paging plus link-specific reads."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, replace
from ipaddress import IPv4Address
from typing import Generic, TypeVar, cast

from sqlalchemy import Table, bindparam, delete, func, or_, select, tuple_, update
from sqlalchemy.orm import Session

from app.db.models import (
    Base,
    Bridge,
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
from app.domain.links import LinkKind, LinkSpec
from app.domain.nat_rules import Forward, NatNetwork
from app.domain.networks import DhcpDnsSpec, static_hosts
from app.domain.status import Status
from app.domain.vms import (
    Accelerator,
    Backend,
    BootSpec,
    Machine,
    NicSpec,
    PortForward,
    SocketNet,
    UserNet,
    Vhost,
    VmSpec,
)

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


class VmRepository(ResourceRepository[Vm]):
    def __init__(self, session: Session) -> None:
        super().__init__(session, Vm)

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


def _link_spec(
    row: Bridge | Tap,
    bridge_names: dict[str, str],
    gateways: dict[str, str],
    uplinks: dict[str, tuple[str, ...]],
) -> LinkSpec:
    addresses = tuple(row.addresses)
    for extra in (gateways.get(row.id), *uplinks.get(row.id, ())):
        if extra is not None and extra not in addresses:
            addresses += (extra,)
    common = LinkSpec(
        id=row.id,
        kind=LinkKind.BRIDGE,
        name=row.name,
        mtu=row.mtu,
        mac=row.mac,
        addresses=addresses,
        # a bridge goes only once its uplink moved the host's configuration back
        deleted=row.deleted and row.id not in uplinks,
        create_intent=row.create_intent,
        ifindex=row.observed_ifindex,
    )
    if isinstance(row, Bridge):
        return replace(common, stp=row.stp, forward_delay_cs=row.forward_delay_cs)
    return replace(
        common,
        kind=LinkKind.TAP,
        master=bridge_names.get(row.bridge_id) if row.bridge_id else None,
        owner_uid=row.owner_uid,
        owner_gid=row.owner_gid,
        multi_queue=row.multi_queue,
        vnet_hdr=row.vnet_hdr,
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


@dataclass(frozen=True)
class ObservedState:
    """What a row said about the kernel when a pass loaded it."""

    generation: int
    observed_generation: int
    status: str
    ifindex: int | None
    mac: str | None

    @classmethod
    def of(cls, row: Bridge | Tap) -> ObservedState:
        return cls(
            row.generation,
            row.observed_generation,
            row.status,
            row.observed_ifindex,
            row.observed_mac,
        )


def load_link_specs(
    session: Session,
    dirty_only: bool = False,
    names: list[str] | None = None,
    also_ids: list[str] | None = None,
) -> tuple[list[LinkSpec], dict[str, ObservedState]]:
    """Bridges and taps as planner specs (all, the unsettled ones plus `also_ids`, or those
    named), with the state each row was in when loaded."""
    bridge_names = {
        row_id: name for row_id, name in session.execute(select(Bridge.id, Bridge.name))
    }
    rows: list[Bridge | Tap] = [
        *_link_rows(session, Bridge, dirty_only, names, also_ids),
        *_link_rows(session, Tap, dirty_only, names, also_ids),
    ]
    gateways = network_gateways(session)
    uplinks = uplink_addresses(session)
    specs = [_link_spec(row, bridge_names, gateways, uplinks) for row in rows]
    return specs, {row.id: ObservedState.of(row) for row in rows}


def uplink_addresses(session: Session) -> dict[str, tuple[str, ...]]:
    """Bridge id -> the addresses its uplink moved onto it (while moved or moving), for every
    bridge that has an uplink row at all."""
    result: dict[str, tuple[str, ...]] = {}
    for bridge_id, phase, saved in session.execute(
        select(Uplink.bridge_id, Uplink.phase, Uplink.saved)
    ):
        moved = phase in ("moving", "attached") and saved
        result[bridge_id] = (
            tuple(f"{a['address']}/{a['prefixlen']}" for a in saved.get("addresses", ()))
            if moved
            else ()
        )
    return result


def network_gateways(session: Session) -> dict[str, str]:
    """Link id -> the gateway address (with prefix) its managed network puts on it."""
    query = select(Network.bridge_id, Network.tap_id, Network.gateway, Network.subnet).where(
        Network.deleted.is_(False)
    )
    result: dict[str, str] = {}
    for bridge_id, tap_id, gateway, subnet in session.execute(query):
        result[bridge_id or tap_id or ""] = f"{gateway}/{subnet.split('/')[1]}"
    return result


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
    options = nic.options or {}
    backend = Backend(nic.backend)
    user = None
    if backend is Backend.USER:
        user_options = dict(options.get("user") or {})
        forwards = tuple(PortForward(**f) for f in user_options.pop("forwards", []))
        user = UserNet(**user_options, forwards=forwards)
    socket = None
    if backend is Backend.SOCKET:
        raw = options["socket"]
        socket = SocketNet(raw["mode"], int(raw["port"]), raw["address"])
    return NicSpec(
        id=nic.id,
        model=nic.model,
        mac=nic.mac,
        backend=backend,
        tap=nic.tap_name,
        user=user,
        socket=socket,
        hub=options.get("hub"),
        queues=nic.queues,
        vhost=Vhost(nic.vhost),
        link_up=nic.link_up,
    )


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


@dataclass(frozen=True)
class ForwardState:
    row: RowState
    spec: Forward | None  # None: its target NIC lost its address


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
        select(Vm.name, VmNic.mac, VmNic.ipv4, VmNic.position)
        .join(Vm, Vm.id == VmNic.vm_id)
        .where(VmNic.network_id == row.id, VmNic.ipv4.is_not(None), Vm.deleted.is_(False))
    )
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
        hosts=static_hosts((name, mac, ipv4 or "", pos) for name, mac, ipv4, pos in nics),
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
    )


def load_network_state(session: Session) -> tuple[list[NetworkState], list[ForwardState]]:
    """Every network and port forward, as the network worker needs them (forwards as plain
    rows joined with their target's address: thousands of them load in milliseconds)."""
    networks = [_network_state(session, row) for row in session.scalars(select(Network))]
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
    ).outerjoin(VmNic, VmNic.id == f.vm_nic_id)
    forwards = []
    for row in session.execute(query):
        (row_id, name, deleted, generation, observed, status, reason) = row[:7]
        protocol, listen, port, end_port, target_port, target = row[7:]
        spec = (
            Forward(row_id, protocol, listen, port, end_port, target, target_port)
            if target
            else None
        )
        state = RowState(row_id, name, deleted, generation, observed, status, reason)
        forwards.append(ForwardState(state, spec))
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
