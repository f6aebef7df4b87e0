"""Port use cases (/v1/ports; Neutron's ports map onto them): create a port with its tap,
MAC and fixed address, change, list and delete it, and plug it into a VM NIC (the `port`
backend) or unplug it. Every method takes the caller's session and Caller (the API's and
the Neutron view's routers share them); nothing commits here.

A port's tap is a `taps` row of its own (kernel name `tap` + 11 hex digits of the port's
id, app.domain.ports), made in the port's transaction and kept by the link worker like any
tap resource; the taps API refuses to change or delete it (409: it is the port's). The port
settles when its tap does (the link writeback mirrors the tap's status onto the port);
changes that need nothing of the kernel (name, description, device_id, device_owner, the
fixed address, which the network worker turns into a static DHCP lease) settle at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.db.models import Network, Operation, Port, Tap, Vm, VmNic, new_id
from app.db.repositories import NetworkRepository, PortRepository, VmRepository
from app.db.session import Session
from app.domain.dependents import Dependent, DependentKind
from app.domain.errors import BeingDeleted, Conflict, InUse, MacTaken, NameTaken, NotFound
from app.domain.networks import allocate_address, check_fixed_address
from app.domain.ports import port_tap_name
from app.domain.segments import SegmentKind
from app.domain.status import Status
from app.domain.tenancy import LOCAL_ADMIN, Caller, Quota
from app.domain.vlans import VlanFacts
from app.domain.vms import allocate_mac
from app.schemas.ports import PortCreate, PortUpdate
from app.services import port_security
from app.services.links import TapService, find_bridge
from app.services.networks import addressing_of, leases_of_others, network_blocking
from app.services.operations import bump, record_operation, record_settled_change
from app.services.port_plugs import find_port
from app.services.ports import LeaseReader
from app.services.quotas import QuotaGuard
from app.services.scoping import create_project, create_scope, list_scope

NO_NETWORK = "ipv4 is a fixed address on the managed network of the port's segment: it has none"


def tap_of(session: Session, port: Port) -> Tap:
    tap = session.get(Tap, port.tap_id)
    assert tap is not None  # the port's row goes before its tap's (mirror_tap)
    return tap


# ---- the resource --------------------------------------------------------------------------


class PortService:
    def __init__(
        self,
        session: Session,
        caller: Caller = LOCAL_ADMIN,
        vlan_facts: VlanFacts | None = None,
        leases: LeaseReader | None = None,
        from_pool: bool = False,
    ) -> None:
        """`vlan_facts`: the probed kernel's VLAN features where a request names a VLAN;
        `leases`: reads a managed network's dnsmasq leases (an address leased to another
        MAC is refused as a fixed address); `from_pool`: a fixed address nobody asked for
        comes from the DHCP range only (Neutron's allocation pool: app.domain.networks
        allocate_address)."""
        self.session = session
        self.from_pool = from_pool
        self.caller = caller
        self.scope = caller.scope
        self.vlan_facts = vlan_facts
        self.leases = leases
        self.ports = PortRepository(session)

    def get(self, ref: str) -> Port:
        return find_port(self.session, ref, self.scope)

    def page(
        self,
        limit: int,
        cursor: str | None,
        project: str | None = None,
        network: str | None = None,
        device_id: str | None = None,
        segment: tuple[str | None, str | None] | None = None,
    ) -> tuple[Sequence[Port], str | None]:
        """A page of the ports the caller sees (`project`: ?project=, list_scope);
        `network`: only those on that managed network's segment (404 unknown);
        `device_id`: only those it plugs; `segment`: only those on this (bridge id, VLAN
        id), one of them None (a Neutron network is a bridge or a VLAN)."""
        scope = list_scope(self.session, self.caller, project)
        segments = segment
        if network is not None:
            found = NetworkRepository(self.session).find(network, self.caller.scope)
            if found is None:
                raise NotFound(f"no network {network!r}")
            segments = (found.bridge_id, found.vlan_id) if found.tap_id is None else ("", None)
        return self.ports.filtered_page(limit, cursor, scope, segments, device_id)

    def user(self, port: Port) -> tuple[VmNic, Vm] | None:
        """The VM NIC (and its VM) that plugs the port; None while unplugged."""
        return self.ports.user(port)

    def users(self, ports: Sequence[Port]) -> dict[str, tuple[VmNic, Vm]]:
        """Tap id -> the VM NIC (and VM) that plugs it, for these ports (one query)."""
        return self.ports.users(ports)

    def taps(self, ports: Sequence[Port]) -> dict[str, Tap]:
        return self.ports.taps(ports)

    def create(
        self, body: PortCreate, port_id: str | None = None, foreign: dict[str, Any] | None = None
    ) -> tuple[Port, Operation]:
        """`port_id`: the new port's id (None: a new one), for which the caller asked the
        host whether a link it does not manage holds its tap's name (`foreign`: refused 409
        as for a tap; None: none known)."""
        port_id = port_id or new_id()
        project_id = create_project(self.session, self.caller, body.project_id)
        self.scope = create_scope(self.caller, project_id)
        if self.ports.named_in_project(project_id, body.name) is not None:
            raise NameTaken(f"this project already has a port named {body.name!r}")
        QuotaGuard(self.session).charge(project_id, {Quota.PORTS: 1})
        bridge_ref, vlan_ref = body.segment()
        if bridge_ref is not None:  # the bridge as every port of ours finds it (404, 409)
            bridge = find_bridge(self.session, bridge_ref, self.scope)
            if bridge is None:
                raise NotFound(f"no bridge {bridge_ref!r}")
        tap = TapService(self.session, self.caller, self.vlan_facts).create_for_port(
            project_id, port_tap_name(port_id), bridge_ref, vlan_ref, foreign
        )
        port = Port(
            id=port_id,
            project_id=project_id,
            name=body.name,
            bridge_id=tap.bridge_id if tap.vlan_id is None else None,
            vlan_id=tap.vlan_id,
            tap_id=tap.id,
            mac_address=self._mac(body.mac_address),
            device_id=body.device_id,
            device_owner=body.device_owner,
            admin_state_up=body.admin_state_up,
            description=body.description,
            generation=1,
        )
        network = self._network(port)
        if body.fixed_ip and (network is not None or body.ipv4 is not None):
            self._fix_address(port, network, body.ipv4)
        self._port_security(port, body.port_security, body.allowed_addresses)
        self.ports.add(port)
        return port, record_operation(self.session, "create", "port", port, self.caller)

    def _mac(self, asked: str | None) -> str:
        """The asked MAC, free among ports and VM NICs (409 otherwise), or a generated one."""
        taken = self.ports.macs() | VmRepository(self.session).nic_macs()
        if asked is None:
            return allocate_mac(taken)
        if asked in taken:
            raise MacTaken(f"MAC {asked} is already used by a port or a VM NIC")
        return asked

    def _network(self, port: Port) -> Network | None:
        """The live managed network on the port's segment (None: none)."""
        if port.vlan_id is not None:
            return network_blocking(self.session, SegmentKind.VLAN, port.vlan_id)
        return network_blocking(self.session, SegmentKind.BRIDGE, port.bridge_id or "")

    def _fix_address(self, port: Port, network: Network | None, asked: str | None) -> None:
        """The asked fixed address (checked: check_fixed_address), or the lowest free one;
        free means held by no VM NIC and no other port on the network (fixed_addresses)."""
        if network is None:
            raise Conflict(NO_NETWORK)  # the segment's state, not the request's shape
        port.network_id = port.ipv4 = None
        self.session.flush()
        plan = addressing_of(network)
        taken = NetworkRepository(self.session).taken_addresses(network.id)
        leased = leases_of_others(self.session, network.id, port.mac_address, self.leases)
        address = (
            check_fixed_address(plan, asked, taken, leased)
            if asked is not None
            else allocate_address(plan, taken, leased, pool=self.from_pool)
        )
        port.network_id, port.ipv4 = network.id, str(address)

    def _port_security(self, port: Port, asked: bool | None, allowed: list[str] | None) -> None:
        """Resolved as a VM NIC's (port_security.resolve), the port's tap standing for it."""
        probe = VmNic(
            backend="port",
            model="virtio-net-pci",
            tap_id=port.tap_id,
            vlan_tagged=[],
            port_security=False,
            allowed_addresses=[],
        )
        port_security.resolve(self.session, probe, asked, allowed, port.project_id)
        port.port_security = probe.port_security
        port.allowed_addresses = list(probe.allowed_addresses)

    def update(self, ref: str, body: PortUpdate) -> tuple[Port, Operation | None]:
        port = self.get(ref)
        if port.deleted:
            raise BeingDeleted(f"port {port.name!r} is being deleted")
        changes = body.changes()
        if "name" in changes and changes["name"] != port.name:
            holder = self.ports.named_in_project(port.project_id, changes["name"])
            if holder is not None:
                raise NameTaken(f"this project already has a port named {changes['name']!r}")
        changed = self._readdress(port, changes.pop("fixed_ip", None), changes)
        for field, value in changes.items():
            if getattr(port, field) != value:
                setattr(port, field, value)
                changed = True
        if not changed:
            return port, None
        # names, descriptions, device fields and addresses need nothing of the tap (a
        # fixed IP is the network worker's: its hosts file follows the rows)
        return port, record_settled_change(self.session, "update", "port", port, self.caller)

    def _readdress(self, port: Port, fixed: bool | None, changes: dict[str, Any]) -> bool:
        """A PATCH's `fixed_ip` and `ipv4` (taken out of `changes`): `fixed_ip` false: none
        (with `ipv4` null or absent); `ipv4` an address, or null for the lowest free one (as
        at creation); `fixed_ip` true alone: the lowest free one unless it has one. Only
        while no VM uses the port (a guest would keep its lease on the old address until it
        renews): 409 otherwise. Whether the address changed."""
        before = (port.network_id, port.ipv4)
        sent = "ipv4" in changes
        asked = changes.pop("ipv4", None)
        if fixed is False:  # `ipv4` null with it is no address too (an address is 422)
            port.network_id = port.ipv4 = None
        elif sent:
            if asked is not None and asked == port.ipv4:
                return False
            self._fix_address(port, self._network(port), asked)
        elif fixed is True and port.ipv4 is None:
            self._fix_address(port, self._network(port), None)
        if (port.network_id, port.ipv4) == before:
            return False
        user = self.ports.user(port)
        if user is not None:
            raise InUse(
                f"port {port.name!r} is plugged into VM {user[1].name!r}: its fixed address "
                "changes only while no VM uses it"
            )
        return True

    def delete(self, ref: str) -> tuple[Port, Operation | None]:
        """409 in-use (naming the VM NIC) while a VM NIC plugs the port; else its tap goes,
        and the port with it."""
        port = self.get(ref)
        if port.deleted:
            return port, None
        user = self.ports.user(port)
        if user is not None:
            nic, vm = user
            visible = self.scope.sees(vm.project_id)
            name = f"{vm.name}/{nic.position}" if visible else "(another project's)"
            dependent = Dependent(
                DependentKind.VM_NIC, nic.id if visible else "", name, vm.id if visible else None
            )
            which = f"VM {vm.name!r} ({vm.id})" if visible else "a VM of another project"
            raise InUse(
                f"port {port.name!r} is in use by {which}: delete the VM (or its NIC) first",
                dependents=[dependent.as_dict()],
            )
        tap = tap_of(self.session, port)
        TapService(self.session, self.caller).delete_for_port(tap)
        port.deleted = True
        port.network_id = port.ipv4 = None  # its lease goes at once: the address is free
        port.bridge_id = port.vlan_id = None  # a port on its way out holds no segment
        bump(port, Status.DELETING)
        return port, record_operation(self.session, "delete", "port", port, self.caller)


def port_of_tap(session: Session, tap_id: str) -> Port | None:
    return PortRepository(session).of_tap(tap_id)
