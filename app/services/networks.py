"""Managed networks and port forwards: validate as a whole, allocate fixed addresses, claim
host ports, write desired state and an operation in the caller's transaction.

A network is on an L2 segment (app.domain.segments: a bridge, a routed tap or a VLAN), whose
driver says which interface carries the gateway, dnsmasq and the NAT rules. The gateway
becomes an address of that interface, so creating or deleting a network also bumps the
segment's object (the link supervisor then adds or removes the address).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Sequence
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from app.db.models import (
    HostPort,
    Network,
    Operation,
    PortForward,
    ResourceColumns,
    Vm,
    VmNic,
    new_id,
)
from app.db.repositories import (
    HostPortRepository,
    NetworkRepository,
    PortForwardRepository,
    VmRepository,
    address_holders,
    network_columns,
    nic_segment_ref,
    object_segment,
    own_addresses,
    probe_targets,
    vms_by_mac,
)
from app.db.session import Session
from app.domain.errors import (
    BeingDeleted,
    Conflict,
    DomainError,
    InvalidInput,
    NameTaken,
    NotFound,
)
from app.domain.networks import (
    Addressing,
    HostPrefix,
    LeaseHolder,
    PortSpan,
    allocate_address,
    check_fixed_address,
    check_forward_ports,
    check_host_routes,
    check_nameservers,
    check_no_overlap,
    check_subnet_free,
    clash_reason,
    clashes,
    foreign_clash,
    listen_address,
    parse_address,
    plan_addressing,
)
from app.domain.path_probe import ProbeTarget
from app.domain.segments import Joiner, Segment
from app.domain.status import Status
from app.domain.tenancy import LOCAL_ADMIN, Caller, Quota, Scope
from app.domain.vlans import VlanFacts
from app.schemas.networks import (
    DhcpIn,
    HostRouteIn,
    NatIn,
    NetworkCreate,
    NetworkUpdate,
    PortForwardCreate,
)
from app.services.in_use import InUseGuard
from app.services.operations import bump, record_operation
from app.services.ports import LeaseReader
from app.services.quotas import QuotaGuard
from app.services.restrictions import SNAT_ADDRESS, check_forward_port, require_admin_for
from app.services.scoping import create_project, create_scope, list_scope
from app.services.segments import join

log = logging.getLogger(__name__)


def addressing_of(row: Network) -> Addressing:
    return plan_addressing(row.subnet, row.gateway, row.range_start, row.range_end)


def _changeable(row: Network) -> tuple[object, ...]:
    """What PATCH may change: the name, description, NAT, DHCP and what DHCP tells the
    guests, and the DNS domain."""
    return (
        row.name,
        row.description,
        row.dns_nameservers,  # replaced, never changed in place: the old list compares
        row.host_routes,
        row.nat,
        row.nat_interface,
        row.snat_address,
        row.dhcp,
        row.range_start,
        row.range_end,
        row.lease_seconds,
        row.domain,
    )


def _check_nat(nat: NatIn, caller: Caller) -> None:
    if nat.snat_address is not None:
        require_admin_for(caller, "nat.snat_address", SNAT_ADDRESS)
        address = parse_address(nat.snat_address, "snat_address")
        if address.is_multicast or address.is_unspecified or address.is_loopback:
            raise InvalidInput(f"snat_address {address} is not a usable unicast address")


def _set_options(
    row: Network,
    subnet: IPv4Network,
    nameservers: Sequence[str] | None,
    routes: Sequence[HostRouteIn] | None,
    sent: Collection[str] = ("dns_nameservers", "host_routes"),
) -> None:
    """Stores the DHCP options that were `sent` (null: [], none), validated against the
    network's subnet (app.domain.networks check_nameservers, check_host_routes)."""
    if "dns_nameservers" in sent:
        row.dns_nameservers = [str(a) for a in check_nameservers(nameservers or ())]
    if "host_routes" in sent:
        pairs = [(route.destination, route.nexthop) for route in routes or ()]
        row.host_routes = [route.as_dict() for route in check_host_routes(subnet, pairs)]


class NetworkService:
    def __init__(
        self,
        session: Session,
        caller: Caller = LOCAL_ADMIN,
        vlan_facts: VlanFacts | None = None,
    ) -> None:
        """`vlan_facts`: the probed kernel's VLAN features, where the request names a VLAN
        (an unknown VLAN where none can exist: app.domain.segments VlanSegment.unknown)."""
        self.session = session
        self.caller = caller
        self.scope = caller.scope
        self.vlan_facts = vlan_facts
        self.networks = NetworkRepository(session)

    def get(self, ref: str) -> Network:
        row = self.networks.find(ref, self.scope)
        if row is None:
            raise NotFound(f"no network {ref!r}")
        return row

    def scoped(self, scope: Scope) -> NetworkService:
        """This service resolving refs within `scope` (a create's, create_scope)."""
        self.scope = scope
        return self

    def alive(self, ref: str) -> Network:
        row = self.get(ref)
        if row.deleted:
            raise BeingDeleted(f"network {row.name!r} is being deleted")
        return row

    def page(
        self, limit: int, cursor: str | None, project: str | None = None
    ) -> tuple[Sequence[Network], str | None]:
        """A page of the networks the caller sees (`project`: ?project=, list_scope)."""
        return self.networks.page(limit, cursor, list_scope(self.session, self.caller, project))

    def nics(self, network_id: str) -> Sequence[VmNic]:
        """Every NIC on the network (VMs on their way out too)."""
        return self.networks.nics(network_id)

    def gateways(self) -> list[str]:
        """The gateway address of every live network."""
        return self.networks.gateways()

    def live_subnets(self) -> list[tuple[str, str]]:
        """(name, subnet) of every live network."""
        return self.networks.live_subnets()

    def own_addresses(self) -> dict[str, list[str]]:
        """Link name -> the IPv4 addresses kvmnetd itself puts on it."""
        return self.networks.own_addresses()

    def probe_targets(self) -> list[ProbeTarget]:
        """The live networks as the path probe needs them."""
        return probe_targets(self.session)

    def link_of(self, row: Network) -> ResourceColumns | None:
        """The network's segment object: its bridge, tap or VLAN (None only once a deleted
        network's object went first)."""
        return self.networks.link(row)

    def link_name(self, row: Network) -> str | None:
        """The kernel link that carries the network's gateway: its segment's L3 interface
        (a bridge's or tap's own link, a VLAN's L3 interface)."""
        segment = self.networks.segment(row)
        return segment.l3_interface if segment is not None else None

    # ---- create ----------------------------------------------------------------------------

    def create(
        self,
        body: NetworkCreate,
        host_prefixes: Sequence[HostPrefix] = (),
    ) -> tuple[Network, Operation]:
        """`host_prefixes`: the host's IPv4 addresses and connected routes now (from the host
        inspector); a subnet overlapping one that is not ours is refused. The network is its
        project's, within its `networks` quota."""
        project_id = create_project(self.session, self.caller, body.project_id)
        self.scope = create_scope(self.caller, project_id)
        self._refuse_name_taken(body.name, project_id)
        QuotaGuard(self.session).charge(project_id, {Quota.NETWORKS: 1})
        kind, ref = body.segment()
        link, segment = self._segment(kind, ref)
        existing = self.networks.on_segment(kind, link.id)
        if existing is not None:
            seen = self.scope.sees(existing.project_id)
            named = f"network {existing.name!r}" if seen else "a network of another project"
            raise Conflict(f"{link.name} already carries {named}")
        plan = plan_addressing(
            body.subnet, body.gateway, body.dhcp.range_start, body.dhcp.range_end
        )
        sees = self.caller.scope.sees
        check_no_overlap(
            plan.subnet,
            [
                (name if sees(project) else None, net)
                for name, net, project in self.networks.subnets()
            ],
        )
        held = [holder.hidden_unless(sees) for holder in address_holders(self.session)]
        check_subnet_free(plan.subnet, segment.l3_interface, held)
        clash = foreign_clash(plan.subnet, host_prefixes, own_addresses(self.session))
        if clash is not None:
            raise Conflict(
                clash_reason(plan.subnet, clash),
                interface=clash.interface,
                prefix=clash.prefix,
            )
        _check_nat(body.nat, self.caller)
        row = Network(
            id=new_id(),
            project_id=project_id,
            name=body.name,
            **network_columns(kind, link.id),
            subnet=str(plan.subnet),
            gateway=str(plan.gateway),
            domain=body.domain,
            description=body.description,
            generation=1,
        )
        _set_options(row, plan.subnet, body.dns_nameservers, body.host_routes)
        self._set_nat(row, body.nat)
        self._set_dhcp(row, body.dhcp, plan)
        self.networks.add(row)
        self.session.flush()
        self._adopt_nics(row, plan, kind, link.id)
        bump(link)  # its addresses now include the gateway
        return row, record_operation(self.session, "create", "network", row, self.caller)

    def _refuse_name_taken(self, name: str, project_id: str, except_id: str | None = None) -> None:
        holder = self.networks.name_holder(name, project_id, except_id)
        if holder is not None:
            raise NameTaken(
                f"network {holder.name!r} ({holder.id}) has this name: network names are "
                "unique within a project without regard to case, as VM and VLAN names are"
            )

    def _segment(self, kind: str, ref: str) -> tuple[ResourceColumns, Segment]:
        """The live object of `kind` named `ref` (404 when unknown, 409 while it is being
        deleted) and the segment it is."""
        # 422 unknown kind, 404 unknown (409 for a VLAN where none can exist), 409 being
        # deleted or refused by its kind (a VLAN in error, with its reason)
        link = join(self.session, kind, ref, Joiner.NETWORK, self.vlan_facts, self.scope)
        segment = object_segment(self.session, kind, link)
        if segment is None:
            raise NotFound(f"what {kind} {link.name!r} rides on is gone")
        return link, segment

    @staticmethod
    def _set_nat(row: Network, nat: NatIn) -> None:
        row.nat = nat.enabled
        row.nat_interface = nat.out_interface
        row.snat_address = str(IPv4Address(nat.snat_address)) if nat.snat_address else None

    @staticmethod
    def _set_dhcp(row: Network, dhcp: DhcpIn, plan: Addressing) -> None:
        row.dhcp = dhcp.enabled
        row.range_start, row.range_end = str(plan.range_start), str(plan.range_end)
        row.lease_seconds = dhcp.lease_time

    def _adopt_nics(self, row: Network, plan: Addressing, kind: str, object_id: str) -> None:
        """VM NICs already on the segment (its ports: a VLAN's access ports, a bridge's
        untagged ones) get fixed addresses now."""
        nics = self.networks.ports(kind, object_id)
        taken: set[str] = set()
        for nic in sorted(nics, key=lambda n: n.id):
            address = str(allocate_address(plan, taken))
            taken.add(address)
            nic.network_id, nic.ipv4 = row.id, address

    # ---- update / delete -------------------------------------------------------------------

    def update(self, ref: str, body: NetworkUpdate) -> tuple[Network, Operation | None]:
        row = self.alive(ref)
        before = _changeable(row)
        # name, nat and dhcp refuse null; domain and description null clear them, the
        # option lists' null empties them
        sent = body.model_fields_set
        if "name" in sent and body.name != row.name:
            self._refuse_name_taken(body.name, row.project_id, except_id=row.id)
            row.name = body.name
        if "description" in sent:
            row.description = body.description
        _set_options(row, IPv4Network(row.subnet), body.dns_nameservers, body.host_routes, sent)
        if "nat" in sent:
            _check_nat(body.nat, self.caller)
            self._set_nat(row, body.nat)
        if "dhcp" in sent:
            plan = plan_addressing(
                row.subnet, row.gateway, body.dhcp.range_start, body.dhcp.range_end
            )
            self._set_dhcp(row, body.dhcp, plan)
        if "domain" in sent:
            row.domain = body.domain
        if _changeable(row) == before:
            return row, None
        bump(row)
        return row, record_operation(self.session, "update", "network", row, self.caller)

    def delete(self, ref: str, force: bool = False) -> tuple[Network, Operation | None]:
        """Refused (409 in-use) while VM NICs have fixed addresses on it or port forwards
        use it, unless `force`: then the forwards are deleted and the NICs stay on their
        link without a fixed address."""
        row = self.get(ref)
        if row.deleted:
            return row, None
        guard = InUseGuard(self.session, self.caller)
        return row, guard.record(guard.delete_network(row, force))


def network_blocking(session: Session, kind: str, object_id: str) -> Network | None:
    """The live network on a segment object, which keeps it from being deleted."""
    row = NetworkRepository(session).on_segment(kind, object_id)
    return row if row is not None and not row.deleted else None


def fixed_address(
    session: Session, nic: VmNic, requested: str | None, leases: LeaseReader | None = None
) -> None:
    """A new VM NIC that is a port of a segment carrying a managed network (a bridge, a
    tap, an access port of a VLAN) gets its fixed address (requested or the lowest free
    one); a requested address on a segment without a network (409), or on none (422), is
    refused, and
    so is one leased to another MAC (`leases` reads the network's dnsmasq lease file;
    inside the DHCP range is fine: check_fixed_address)."""
    ref = nic_segment_ref(nic)
    network = network_blocking(session, *ref) if ref is not None else None
    if network is None:
        if requested is None:
            return
        if ref is None:
            raise InvalidInput(NO_SEGMENT)
        raise Conflict(NO_NETWORK)  # the segment's state: a network created on it resolves it
    plan = addressing_of(network)
    networks = NetworkRepository(session)
    session.flush()  # NICs of this request already added count as taken
    taken = networks.taken_addresses(network.id)
    leased = leases_of_others(session, network.id, nic.mac, leases)
    address = (
        check_fixed_address(plan, requested, taken, leased)
        if requested is not None
        else allocate_address(plan, taken, leased)
    )
    nic.network_id, nic.ipv4 = network.id, str(address)


NO_NETWORK = "ipv4 is only for NICs on a managed network's bridge, tap or VLAN"
NO_SEGMENT = "ipv4 is only for NICs on a managed network's bridge or tap"


def leases_of_others(
    session: Session, network_id: str, mac: str, leases: LeaseReader | None
) -> list[LeaseHolder]:
    """The network's active leases held by other MACs than `mac`, each with its VM."""
    if leases is None:
        return []
    try:
        active = leases(network_id)
    except (OSError, ValueError) as exc:  # an unreadable lease file: nothing known is leased
        log.warning("leases of network %s unreadable, not checked: %s", network_id, exc)
        return []
    vms = vms_by_mac(session, network_id)
    return [
        _holder(lease, vms.get(str(lease["mac"]).lower()))
        for lease in active
        if str(lease["mac"]).lower() != mac.lower() and _is_ipv4(lease["address"])
    ]


def _is_ipv4(text: object) -> bool:
    """A lease line's address field is an IPv4 address (a garbled line is ignored)."""
    try:
        IPv4Address(str(text))
    except ValueError:
        return False
    return True


def _holder(lease: dict[str, Any], vm: tuple[str, str | None] | None) -> LeaseHolder:
    return LeaseHolder(
        mac=str(lease["mac"]).lower(),
        address=str(lease["address"]),
        hostname=lease.get("hostname"),
        vm=vm[0] if vm is not None else None,
    )


# ---- port forwards --------------------------------------------------------------------------


def forward_name(protocol: str, listen: IPv4Address, span: PortSpan) -> str:
    where = "any" if str(listen) == "0.0.0.0" else str(listen)
    return f"{protocol}-{where}-{span}"


class PortClaims:
    """The host port claims (user-networking forwards of VM NICs, networks' port forwards).
    One claim asks the database for overlapping ones; a batch (`preload`) reads them all once
    and checks in memory. Writers are serialized, so nothing claims a port between the read
    and the insert."""

    def __init__(self, session: Session, preload: bool = False, scope: Scope | None = None) -> None:
        """`scope`: what the caller sees (Caller.scope); a clash with another project's
        claim names no forward, VM or id of it (None: the daemon itself, sees all)."""
        self.session = session
        self.scope = scope
        self.preloaded = preload
        # owner id -> how to name it, for claims of this request (stored nowhere yet)
        self.labels: dict[str, str] = {}
        self._single: dict[tuple[str, int], list[HostPort]] = {}
        self._ranges: list[HostPort] = []
        if preload:
            for claim in HostPortRepository(session).all():
                self._index(claim)

    def _index(self, claim: HostPort) -> None:
        if claim.end_port is None or claim.end_port == claim.port:
            self._single.setdefault((claim.protocol, claim.port), []).append(claim)
        else:
            self._ranges.append(claim)

    def _clash(self, protocol: str, address: str, span: PortSpan) -> HostPort | None:
        if not self.preloaded:
            stored = HostPortRepository(self.session).overlapping(
                protocol, address, span.port, span.end_port
            )
            if stored:
                return stored[0]
        for port in range(span.port, span.end_port + 1):
            for claim in self._single.get((protocol, port), ()):
                if clashes(claim.address, address):
                    return claim
        for claim in self._ranges:
            claimed = PortSpan(claim.port, claim.end_port or claim.port)
            same = claim.protocol == protocol and clashes(claim.address, address)
            if same and claimed.overlaps(span):
                return claim
        return None

    def claim(self, protocol: str, address: str, span: PortSpan, owner: str, owner_id: str) -> None:
        """Claim host ports; any overlapping claim on the same or the wildcard address is a
        conflict."""
        clash = self._clash(protocol, address, span)
        if clash is not None:
            claimed = PortSpan(clash.port, clash.end_port or clash.port)
            raise Conflict(
                f"host port {protocol}/{address}:{span} clashes with {self._owner(clash)} on "
                f"{clash.address}:{claimed}"
            )
        row = HostPort(
            protocol=protocol,
            address=address,
            port=span.port,
            end_port=None if span.end_port == span.port else span.end_port,
            owner=owner,
            owner_id=owner_id,
        )
        self._index(row)
        self.session.add(row)

    def _owner(self, claim: HostPort) -> str:
        """The claim's owner as a user knows it: a port forward by name, a VM NIC's
        user-networking forward by VM and NIC, one of this request by its place in it."""
        if claim.owner_id in self.labels:
            return self.labels[claim.owner_id]
        if claim.owner == "port_forward":
            forward = PortForwardRepository(self.session).get(claim.owner_id)
            if forward is None:
                return f"port forward {claim.owner_id}"
            if not self._sees(forward.project_id):
                return "a port forward of another project"
            return f"port forward {forward.name!r} ({forward.id})"
        vms = VmRepository(self.session)
        nic = vms.nic(claim.owner_id)
        vm = None if nic is None else vms.get(nic.vm_id)
        if nic is None or vm is None:
            return f"the user-networking forward of VM NIC {claim.owner_id}"
        if not self._sees(vm.project_id):
            return "the user-networking forward of another project's VM"
        return f"the user-networking forward of VM {vm.name!r} NIC {nic.position}"

    def _sees(self, project_id: str) -> bool:
        return self.scope is None or self.scope.sees(project_id)


class PortForwardService:
    def __init__(self, session: Session, caller: Caller = LOCAL_ADMIN) -> None:
        self.session = session
        self.caller = caller
        self.scope = caller.scope
        self.forwards = PortForwardRepository(session)
        # looked up once per request, however many forwards it creates
        self._claims: PortClaims | None = None
        self._names: set[str] | None = None  # preloaded for a batch
        self._batch = False
        self._item: int | None = None  # the batch item being created
        self._batch_names: dict[str, int] = {}  # name -> the batch item that took it
        self._batch_project: str | None = None  # the project of the batch's last item
        # by (the project names resolve in, ref): a batch may create in several projects
        self._networks: dict[tuple[str | None, str], Network] = {}
        self._vms: dict[tuple[str | None, str], tuple[Vm, Sequence[VmNic]]] = {}

    def get(self, ref: str) -> PortForward:
        row = self.forwards.find(ref, self.scope)
        if row is None:
            raise NotFound(f"no port forward {ref!r}")
        return row

    def page(
        self, limit: int, cursor: str | None, project: str | None = None
    ) -> tuple[Sequence[PortForward], str | None]:
        """A page of the forwards the caller sees (`project`: ?project=, list_scope)."""
        return self.forwards.page(limit, cursor, list_scope(self.session, self.caller, project))

    def target(self, row: PortForward) -> VmNic | None:
        """The target NIC (None once its VM is gone: the forward is then on its way out)."""
        return VmRepository(self.session).nic(row.vm_nic_id)

    def create(self, body: PortForwardCreate) -> tuple[PortForward, Operation]:
        """The forward is its project's, within its `port_forwards` quota."""
        project_id = create_project(self.session, self.caller, body.project_id)
        QuotaGuard(self.session).charge(project_id, {Quota.PORT_FORWARDS: 1})
        return self._create(body)

    def _create(self, body: PortForwardCreate) -> tuple[PortForward, Operation]:
        span = check_forward_ports(body.port, body.end_port, body.target_port)
        check_forward_port(self.caller, span.port)
        listen = listen_address(body.listen_address)
        project_id = create_project(self.session, self.caller, body.project_id)
        self.scope = create_scope(self.caller, project_id)
        network = self._network(body.network)
        nic = self._target_nic(body.vm, body.nic, network)
        name = body.name or forward_name(body.protocol, listen, span)
        row_id = new_id()
        # the ports first: a forward posted again, or twice in a batch, is a port clash
        # (its derived name would be taken too, which says less)
        if self._claims is None:
            self._claims = PortClaims(self.session, self._batch, self.caller.scope)
        if self._item is not None:
            self._claims.labels[row_id] = f"item {self._item} of this batch ({name!r})"
        self._claims.claim(body.protocol, str(listen), span, "port_forward", row_id)
        self._refuse_name_taken(name, project_id)
        row = PortForward(
            id=row_id,
            project_id=project_id,
            name=name,
            network_id=network.id,
            vm_nic_id=nic.id,
            protocol=body.protocol,
            listen_address=str(listen),
            port=span.port,
            end_port=span.end_port,
            target_port=body.target_port if body.target_port is not None else span.port,
            description=body.description,
            generation=1,
        )
        self.forwards.add(row)
        return row, record_operation(self.session, "create", "port_forward", row, self.caller)

    def create_many(
        self, bodies: Sequence[PortForwardCreate]
    ) -> list[tuple[PortForward, Operation]]:
        """All or nothing: the caller's transaction rolls back on the first problem, which
        names the failing item. The batch asks each project's `port_forwards` quota for all
        its items at once (409 over-quota before any item)."""
        asked = Counter(create_project(self.session, self.caller, b.project_id) for b in bodies)
        for project_id, count in asked.items():
            QuotaGuard(self.session).charge(project_id, {Quota.PORT_FORWARDS: count})
        self._batch = True
        created = []
        for index, body in enumerate(bodies):
            self._item = index
            try:
                created.append(self._create(body))
            except DomainError as exc:
                exc.detail = f"port_forwards[{index}]: {exc.detail}"
                exc.extra = {**exc.extra, "index": index}
                raise
        return created

    def _refuse_name_taken(self, name: str, project_id: str) -> None:
        """409 name-taken naming who has the name: a stored forward, or an earlier item of
        this batch."""
        if self._batch_project not in (None, project_id):
            self._names = None  # a batch across projects: each item's own project's names
        self._batch_project = project_id
        if name in self._batch_names:
            raise NameTaken(f"item {self._batch_names[name]} of this batch is named {name!r}")
        if self._batch and self._names is None:
            self._names = self.forwards.names(project_id)
        taken = (
            name in self._names
            if self._names is not None
            else self.forwards.name_holder(name, project_id) is not None
        )
        if taken:
            raise NameTaken(f"a port forward named {name!r} exists")
        if self._item is not None:
            self._batch_names[name] = self._item

    def _network(self, ref: str) -> Network:
        key = (self.scope.home, ref)
        if key not in self._networks:
            service = NetworkService(self.session, self.caller).scoped(self.scope)
            self._networks[key] = service.alive(ref)
        return self._networks[key]

    def _vm(self, ref: str) -> tuple[Vm, Sequence[VmNic]]:
        key = (self.scope.home, ref)
        if key not in self._vms:
            vms = VmRepository(self.session)
            vm = vms.find(ref, self.scope)
            if vm is None:
                raise NotFound(f"no VM {ref!r}")
            if vm.deleted:
                raise BeingDeleted(f"VM {vm.name!r} is being deleted")
            self._vms[key] = vm, vms.nics(vm.id)
        return self._vms[key]

    def _target_nic(self, vm_ref: str, index: int | None, network: Network) -> VmNic:
        vm, nics = self._vm(vm_ref)
        on_network = [n for n in nics if n.network_id == network.id and n.ipv4]
        if index is not None:
            on_network = [n for n in on_network if n.position == index]
        if not on_network:
            which = f"NIC {index}" if index is not None else "no NIC"
            raise InvalidInput(
                f"VM {vm.name!r} has {which} on network {network.name!r}"
                if index is None
                else f"{which} of VM {vm.name!r} is not on network {network.name!r}"
            )
        return on_network[0]

    def delete(self, ref: str) -> tuple[PortForward, Operation | None]:
        row = self.get(ref)
        if row.deleted:
            return row, None
        self.mark_deleted(row)
        return row, record_operation(self.session, "delete", "port_forward", row, self.caller)

    @staticmethod
    def mark_deleted(row: PortForward) -> None:
        row.deleted = True
        bump(row, Status.DELETING)
