"""Managed networks and port forwards: their rows and what the network worker loads
and records."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import cast

from sqlalchemy import Table, bindparam, delete, select, update
from sqlalchemy.orm import Session

from app.db.models import HostPort, Network, Port, ResourceColumns, Vm, VmNic
from app.db.models import PortForward as PortForwardRow
from app.db.repositories.addresses import fixed_addresses, own_addresses
from app.db.repositories.base import ResourceRepository
from app.db.repositories.segments import (
    network_of_object,
    network_on,
    network_ref,
    network_segment,
    preload_objects,
    readable_segment,
    segment_ports,
    segment_row,
)
from app.domain.errors import InvalidInput
from app.domain.nat_rules import Forward, NatNetwork
from app.domain.networks import (
    DhcpDnsSpec,
    HostRoute,
    NicAddress,
    StaticHost,
    check_host_routes,
    check_nameservers,
    classless_routes,
    static_hosts,
)
from app.domain.path_probe import ProbeTarget
from app.domain.segments import Segment
from app.domain.status import Status


class NetworkRepository(ResourceRepository[Network]):
    names_fold_case = True

    def __init__(self, session: Session) -> None:
        super().__init__(session, Network)

    def on_segment(self, kind: str, object_id: str) -> Network | None:
        """The network on a segment object of `kind` (a bridge, tap or VLAN; deleted or
        not)."""
        return network_on(self.session, kind, object_id)

    def of_object(self, obj: ResourceColumns) -> Network | None:
        """The network on a bridge, tap or VLAN row (deleted or not)."""
        return network_of_object(self.session, obj)

    def subnets(self, except_id: str | None = None) -> list[tuple[str, str, str]]:
        """(name, subnet, project id) of every network but one."""
        query = select(Network.name, Network.subnet, Network.project_id).where(
            Network.id != (except_id or "")
        )
        return [(name, subnet, project) for name, subnet, project in self.session.execute(query)]

    def nics(self, network_id: str) -> Sequence[VmNic]:
        return self.session.scalars(select(VmNic).where(VmNic.network_id == network_id)).all()

    def live_subnets(self) -> list[tuple[str, str]]:
        """(name, subnet) of every network not being deleted."""
        query = select(Network.name, Network.subnet).where(Network.deleted.is_(False))
        return [(name, subnet) for name, subnet in self.session.execute(query)]

    def own_addresses(self) -> dict[str, list[str]]:
        return own_addresses(self.session)

    def link(self, row: Network) -> ResourceColumns | None:
        """The network's segment object: its bridge, tap or VLAN (None only once a deleted
        network's object went first)."""
        return segment_row(self.session, row)

    def segment(self, row: Network) -> Segment | None:
        """The segment the network is on (app.domain.segments: its L3 interface)."""
        return readable_segment(self.session, row)

    def gateways(self) -> list[str]:
        query = select(Network.gateway).where(Network.deleted.is_(False))
        return list(self.session.scalars(query))

    def taken_addresses(self, network_id: str) -> set[str]:
        """The fixed addresses of the network's VM NICs and ports (fixed_addresses)."""
        return fixed_addresses(self.session, network_id)

    def ports(self, kind: str, object_id: str) -> Sequence[VmNic]:
        """The VM NICs that are ports of a segment object: a bridge's untagged ones (not
        those on its VLANs, nor its trunk NICs), a tap's, a VLAN's access ports."""
        return segment_ports(self.session, kind, object_id)


class PortForwardRepository(ResourceRepository[PortForwardRow]):
    def __init__(self, session: Session) -> None:
        super().__init__(session, PortForwardRow)

    def of_network(self, network_id: str) -> Sequence[PortForwardRow]:
        query = select(PortForwardRow).where(PortForwardRow.network_id == network_id)
        return self.session.scalars(query).all()

    def names(self, project_id: str) -> set[str]:
        """The names of a project's port forwards (unique per project)."""
        query = select(PortForwardRow.name).where(PortForwardRow.project_id == project_id)
        return set(self.session.scalars(query))

    def to_nics(self, nic_ids: Sequence[str]) -> Sequence[PortForwardRow]:
        query = select(PortForwardRow).where(PortForwardRow.vm_nic_id.in_(nic_ids))
        return self.session.scalars(query).all()


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


def vms_by_mac(session: Session, network_id: str) -> dict[str, tuple[str, str | None]]:
    """MAC -> (VM name, fixed address) of the NICs on a network."""
    query = (
        select(VmNic.mac, Vm.name, VmNic.ipv4)
        .join(Vm, Vm.id == VmNic.vm_id)
        .where(VmNic.network_id == network_id)
    )
    return {mac: (name, ipv4) for mac, name, ipv4 in session.execute(query)}


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
    project_id: str | None = None  # what its events carry (app.bus.Event)


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
        row.project_id,
    )


def _link_problem(kind: str, link: ResourceColumns | None) -> str | None:
    """Why the network's segment object is not ready yet (None: it is)."""
    if link is None:
        return "its link is gone"
    if link.status == Status.ACTIVE.value and link.observed_generation == link.generation:
        return None
    detail = f": {link.status_reason}" if link.status_reason else ""
    return f"waiting for {kind} {link.name} ({link.status}{detail})"


def _dhcp_options(row: Network) -> tuple[tuple[IPv4Address, ...], tuple[HostRoute, ...]]:
    """The stored DNS servers and routes, checked again as the API checked them (a row
    written by hand that breaks the rules raises InvalidInput: the network is reported as
    unreadable rather than served half)."""
    stored_routes = row.host_routes
    if not isinstance(stored_routes, list) or not all(isinstance(r, dict) for r in stored_routes):
        raise InvalidInput(f"host_routes is stored as {stored_routes!r}, not a list of routes")
    stored_servers = row.dns_nameservers
    if not isinstance(stored_servers, list):
        raise InvalidInput(f"dns_nameservers is stored as {stored_servers!r}, not a list")
    routes = check_host_routes(
        IPv4Network(row.subnet),
        [(str(r.get("destination")), str(r.get("nexthop"))) for r in stored_routes],
    )
    nameservers = check_nameservers(str(s) for s in stored_servers)
    return nameservers, classless_routes(routes, IPv4Address(row.gateway))


def _network_state(session: Session, row: Network) -> NetworkState:
    # a segment its driver cannot describe raises InvalidInput (a ValueError): the caller
    # reports the network as unreadable
    link, segment = network_segment(session, row)
    link_name = segment.l3_interface if segment is not None else None
    ref = network_ref(row)
    problem = _link_problem(ref[0] if ref else "link", link)
    if link is not None and segment is None:
        problem = f"what {link.name} rides on is gone"
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
    nameservers, routes = _dhcp_options(row)
    service = DhcpDnsSpec(
        network_id=row.id,
        interface=link_name or "",
        subnet=row.subnet,
        gateway=row.gateway,
        dhcp=row.dhcp,
        range_start=IPv4Address(row.range_start),
        range_end=IPv4Address(row.range_end),
        lease_seconds=row.lease_seconds,
        domain=row.domain,
        hosts=static_hosts((name, mac, ipv4 or "", pos) for name, mac, ipv4, pos, *_ in nics)
        + port_hosts(session, row.id),
        nameservers=nameservers,
        routes=routes,
    )
    addresses = tuple(
        NicAddress(nic_id, name, pos, mac, ipv4 or "", observed, reason)
        for name, mac, ipv4, pos, nic_id, observed, reason in nics
    )
    nat = NatNetwork(
        row.id, row.subnet, row.nat, row.nat_interface, row.snat_address, row.project_id
    )
    return NetworkState(
        _row_state(row),
        link_name,
        problem,
        nat,
        service,
        row.dnsmasq_pid,
        row.restarts,
        addresses,
    )


def port_hosts(session: Session, network_id: str) -> tuple[StaticHost, ...]:
    """The static leases of the ports with a fixed address on the network (no host name:
    a port is no host; whether a VM uses it or not, its MAC always gets its address)."""
    query = (
        select(Port.mac_address, Port.ipv4)
        .where(Port.network_id == network_id, Port.ipv4.is_not(None), Port.deleted.is_(False))
        .order_by(Port.created_at, Port.id)
    )
    return tuple(StaticHost(mac, ipv4 or "", None) for mac, ipv4 in session.execute(query))


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
    rows = session.scalars(select(Network)).all()
    preload_objects(session, rows)
    for network in rows:
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
        f.project_id,
    ).outerjoin(VmNic, VmNic.id == f.vm_nic_id)
    forwards = []
    for row in session.execute(query):
        (row_id, name, deleted, generation, observed, status, reason) = row[:7]
        protocol, listen, port, end_port, target_port, target, nic_id, project_id = row[7:]
        spec = (
            Forward(row_id, protocol, listen, port, end_port, target, target_port)
            if target
            else None
        )
        state = RowState(row_id, name, deleted, generation, observed, status, reason, project_id)
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


def probe_targets(session: Session) -> list[ProbeTarget]:
    """The live managed networks, as the path probe needs them (app.domain.path_probe):
    each is probed from a port on its segment's `probe_bridge` (app.domain.segments: a
    bridge, a bridge_per_vlan VLAN's own bridge; none for a routed tap or a filtering
    trunk's VLAN, whose port would need its VLAN membership set)."""
    query = select(Network).where(Network.deleted.is_(False)).order_by(Network.name)
    targets = []
    rows = session.scalars(query).all()
    preload_objects(session, rows)
    for network in rows:
        segment = readable_segment(session, network)
        targets.append(
            ProbeTarget(
                network_id=network.id,
                network=network.name,
                bridge=segment.probe_bridge if segment is not None else None,
                gateway=network.gateway,
                prefixlen=IPv4Network(network.subnet).prefixlen,
                dhcp=network.dhcp,
                stp_forward_delay_s=segment.probe_delay_s if segment is not None else 0.0,
            )
        )
    return targets


def network_referrers(session: Session, network_id: str) -> list[str]:
    """Port forwards that still reference a network row (their foreign key restricts)."""
    query = select(PortForwardRow.name).where(PortForwardRow.network_id == network_id)
    return [f"port_forward {name}" for name in session.scalars(query)]
