"""Neutron ports <-> our ports (issue 12, the lead's design): a Neutron port is a kvmnetd
port (/v1/ports), its id the port's id; its network_id the port's segment (bridge or VLAN:
the Neutron network), its fixed_ips the port's fixed address with the managed network's id
as subnet_id.

Creates, changes and deletes go through PortService: validation, quotas, scoping, the
fixed-address rules (app.domain.networks.check_fixed_address), operations and events are
its. What Neutron adds here: the body's translation (fixed_ips, port_security_enabled,
allowed_address_pairs), a default name, If-Match revisions and Neutron's error types.

Unlike Neutron, a port a VM uses is not deleted (409 PortInUse naming the VM): its tap is
the VM's NIC, and Nova would unplug it first.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from pydantic import ValidationError

from app.db.models import Network, Operation, Port, Tap, Vlan, Vm, VmNic
from app.db.repositories import PortRepository, TagRepository
from app.db.session import Session
from app.domain.errors import InUse
from app.domain.neutron import (
    NeutronBadRequest,
    NeutronConfig,
    NeutronError,
    check_revision,
    timestamp,
)
from app.domain.neutron import not_found as neutron_not_found
from app.domain.ports import port_status
from app.domain.segments import SegmentKind
from app.domain.tenancy import Caller
from app.domain.vlans import VlanFacts
from app.schemas.neutron_ports import (
    NeutronAddressPair,
    NeutronFixedIp,
    NeutronPortCreate,
    NeutronPortUpdate,
)
from app.schemas.ports import PortCreate, PortUpdate
from app.services.network_ports import PortService
from app.services.networks import network_blocking
from app.services.neutron.networks import NeutronNetworks, Segment
from app.services.ports import LeaseReader
from app.services.scoping import create_project

RESOURCE = "port"  # the tags' resource
VIF_TYPE = "tap"  # qemu opens the port's tap (Neutron's linuxbridge agent: vif_type tap)
VNIC_TYPE = "normal"


def default_name(port_id: str) -> str:
    """A port created without a name: `port-` + 8 hex digits of its id (our names are
    required and unique in a project; Neutron's may be empty)."""
    return "port-" + port_id.replace("-", "")[:8]


class NeutronPorts:
    def __init__(
        self,
        session: Session,
        caller: Caller,
        config: NeutronConfig,
        host: str = "",
        vlan_facts: VlanFacts | None = None,
        leases: LeaseReader | None = None,
    ) -> None:
        """`host`: binding:host_id (this host's name); `vlan_facts`, `leases`: as
        PortService takes them (a create on a VLAN, the fixed-address lease check)."""
        self.session = session
        self.caller = caller
        self.config = config
        self.host = host
        # automatic fixed IPs from the subnet's allocation pool alone, as Neutron's IPAM
        self.service = PortService(session, caller, vlan_facts, leases, from_pool=True)

    # ---- reads ---------------------------------------------------------------------------

    def views(self) -> list[dict[str, Any]]:
        """Every port the caller sees (an admin's: every project's), in creation order."""
        return self._present(PortRepository(self.session).live(self.caller.scope))

    def view(self, port_id: str) -> dict[str, Any]:
        return self._present([self.locate(port_id)])[0]

    def locate(self, port_id: str, write: bool = False) -> Port:
        """The live port with this id the caller sees: 404 PortNotFound otherwise (a name
        is no id: the clients fall back on ?name=)."""
        port = self.session.get(Port, port_id)
        if port is None or port.deleted or not self.caller.scope.sees(port.project_id):
            raise neutron_not_found(RESOURCE, port_id)
        return port

    def _present(self, rows: Sequence[Port]) -> list[dict[str, Any]]:
        taps, users = self.service.taps(rows), self.service.users(rows)
        tags = TagRepository(self.session).of_each(RESOURCE, [r.id for r in rows])
        trunks = self._trunks([taps.get(r.tap_id) for r in rows])
        return [
            self._one(r, taps.get(r.tap_id), users.get(r.tap_id), tags.get(r.id, []), trunks)
            for r in rows
        ]

    def _trunks(self, taps: Sequence[Tap | None]) -> dict[str, str]:
        """Tap id -> the segment a port's tap is on, when the port row names none (an
        untagged port's bridge comes from its tap)."""
        return {t.id: t.bridge_id for t in taps if t is not None and t.bridge_id is not None}

    def _one(
        self,
        row: Port,
        tap: Tap | None,
        user: tuple[VmNic, Vm] | None,
        tags: list[str],
        trunks: dict[str, str],
    ) -> dict[str, Any]:
        oper_state = tap.observed_oper_state if tap is not None else None
        fixed = (
            [{"subnet_id": row.network_id, "ip_address": row.ipv4}]
            if row.network_id is not None and row.ipv4 is not None
            else []
        )
        network_id = row.vlan_id or row.bridge_id or trunks.get(row.tap_id, "")
        return {
            "id": row.id,
            "name": row.name,
            "description": row.description or "",
            "network_id": network_id,
            "project_id": row.project_id,
            "tenant_id": row.project_id,
            "mac_address": row.mac_address,
            "fixed_ips": fixed,
            "device_id": row.device_id,
            "device_owner": row.device_owner,
            "status": port_status(row.status, user is not None, oper_state),
            "admin_state_up": row.admin_state_up,
            "port_security_enabled": row.port_security,
            "allowed_address_pairs": [
                {"ip_address": a, "mac_address": row.mac_address}
                for a in row.allowed_addresses or []
            ],
            "security_groups": [],
            "binding:host_id": self.host,
            "binding:vif_type": VIF_TYPE,
            "binding:vnic_type": VNIC_TYPE,
            "binding:vif_details": {},
            "binding:profile": {},
            "revision_number": row.generation,
            "tags": tags,
            "created_at": timestamp(row.created_at),
            "updated_at": timestamp(row.updated_at),
        }

    # ---- create --------------------------------------------------------------------------

    def create(
        self, body: NeutronPortCreate, port_id: str, foreign: dict[str, Any] | None
    ) -> tuple[Port, Operation]:
        """Through PortService.create (same transaction): `port_id` is the new port's id,
        for which the API asked the host about its tap's name (`foreign`)."""
        _vnic_type(body.binding_vnic_type)
        if not body.admin_state_up:
            raise NeutronBadRequest("admin_state_up false is not supported (a port's tap is up)")
        if body.project_id and body.tenant_id and body.project_id != body.tenant_id:
            raise NeutronBadRequest("project_id and tenant_id name different projects")
        # the project first (404 for one the caller may not name, as the native create),
        # then the network
        create_project(self.session, self.caller, body.project_id or body.tenant_id)
        segment = NeutronNetworks(self.session, self.caller, self.config).locate(body.network_id)
        where = "vlan" if isinstance(segment, Vlan) else "bridge"
        fixed_ip, ipv4 = self._fixed_ips(body.fixed_ips, segment)
        native: dict[str, Any] = {
            "name": body.name or default_name(port_id),
            where: segment.id,
            "mac_address": body.mac_address,
            "fixed_ip": fixed_ip,
            "ipv4": ipv4,
            "device_id": body.device_id,
            "device_owner": body.device_owner,
            "description": body.description or None,
            "port_security": body.port_security_enabled,
            "allowed_addresses": _addresses(body.allowed_address_pairs),
            "project_id": body.project_id or body.tenant_id,
        }
        port, operation = self.service.create(_native(PortCreate, native), port_id, foreign)
        _own_macs(body.allowed_address_pairs, port.mac_address)
        return port, operation

    def _fixed_ips(
        self, asked: list[NeutronFixedIp] | None, segment: Segment
    ) -> tuple[bool, str | None]:
        """(fixed_ip, ipv4) of the native port from Neutron's fixed_ips: omitted: the
        lowest free address; []: none; one item: its ip_address (or the lowest free one);
        its subnet_id must be the network's subnet. More than one: 400."""
        if asked is None:
            return True, None
        if not asked:
            return False, None
        if len(asked) > 1:
            raise NeutronBadRequest(
                "Invalid input for fixed_ips. Reason: a port has at most one IPv4 address"
            )
        item = asked[0]
        subnet = self._subnet_of(segment)
        if item.subnet_id is not None and (subnet is None or subnet.id != item.subnet_id):
            raise NeutronBadRequest(
                f"Invalid input for fixed_ips. Reason: subnet {item.subnet_id} is not a "
                f"subnet of network {segment.id}"
            )
        if item.ip_address is not None and not _on_subnet(item.ip_address, subnet):
            raise NeutronError(
                400,
                "InvalidIpForNetwork",
                f"IP address {item.ip_address} is not a valid IP for any of the subnets on "
                "the specified network.",
            )
        return True, item.ip_address

    def _subnet_of(self, segment: Segment) -> Network | None:
        kind = SegmentKind.VLAN if isinstance(segment, Vlan) else SegmentKind.BRIDGE
        return network_blocking(self.session, kind, segment.id)

    # ---- update, delete -------------------------------------------------------------------

    def update(
        self, port_id: str, body: NeutronPortUpdate, revision: int | None
    ) -> tuple[Port, Operation | None]:
        port = self.locate(port_id, write=True)
        check_revision(revision, port.generation)
        sent = body.model_fields_set
        _vnic_type(body.binding_vnic_type)
        if "mac_address" in sent and body.mac_address != port.mac_address:
            raise NeutronBadRequest("mac_address cannot change (it is the guest's)")
        if "port_security_enabled" in sent and body.port_security_enabled != port.port_security:
            raise NeutronBadRequest("port_security_enabled is fixed at the port's creation")
        if "allowed_address_pairs" in sent:
            _own_macs(body.allowed_address_pairs, port.mac_address)
            if _addresses(body.allowed_address_pairs) != (port.allowed_addresses or []):
                raise NeutronBadRequest("allowed_address_pairs are fixed at the port's creation")
        native: dict[str, Any] = {}
        for field in ("name", "device_id", "device_owner", "admin_state_up"):
            if field in sent and getattr(body, field) is not None:
                native[field] = getattr(body, field)
        if native.get("admin_state_up") is False:
            raise NeutronBadRequest("admin_state_up false is not supported (a port's tap is up)")
        if "name" in native and not native["name"]:
            native["name"] = default_name(port.id)
        if "description" in sent:
            native["description"] = body.description or None
        if "fixed_ips" in sent:
            native.update(self._readdress(port, body.fixed_ips))
        return self.service.update(port.id, _native(PortUpdate, native))

    def _readdress(self, port: Port, asked: list[NeutronFixedIp] | None) -> dict[str, Any]:
        """The PATCH fields for Neutron's new fixed_ips: [] or null: none; one item: its
        ip_address (unchanged when it is the port's; without one, the lowest free)."""
        tap = self.session.get(Tap, port.tap_id)
        segment_id = port.vlan_id or port.bridge_id or (tap.bridge_id if tap else "") or ""
        segment = NeutronNetworks(self.session, self.caller, self.config).locate(segment_id)
        fixed_ip, ipv4 = self._fixed_ips(asked or [], segment)
        if not fixed_ip:
            return {"fixed_ip": False}
        if ipv4 is None:
            return {"fixed_ip": True} if port.ipv4 is not None else {"ipv4": None}
        return {"ipv4": ipv4}

    def delete(self, port_id: str, revision: int | None) -> tuple[Port, Operation | None]:
        """Through PortService.delete: 409 PortInUse while a VM uses the port (Neutron
        would delete it; we refuse)."""
        port = self.locate(port_id, write=True)
        check_revision(revision, port.generation)
        try:
            deleted, operation = self.service.delete(port.id)
        except InUse as exc:
            raise NeutronError(
                409,
                "PortInUse",
                f"Unable to complete operation on port {port_id}: {exc.detail}",
            ) from None
        TagRepository(self.session).clear(RESOURCE, port.id)
        return deleted, operation


def _vnic_type(asked: str | None) -> None:
    if asked is not None and asked != VNIC_TYPE:
        raise NeutronBadRequest(f"binding:vnic_type {asked!r} is not supported (only normal)")


def _addresses(pairs: list[NeutronAddressPair] | None) -> list[str] | None:
    return None if pairs is None else [p.ip_address for p in pairs]


def _own_macs(pairs: list[NeutronAddressPair] | None, mac: str) -> None:
    """A pair's MAC, when given, is the port's own: the anti-spoofing rules allow the port's
    MAC only (app.domain.port_security)."""
    for pair in pairs or []:
        if pair.mac_address is not None and pair.mac_address.lower() != mac.lower():
            raise NeutronBadRequest(
                f"Invalid input for allowed_address_pairs. Reason: mac_address "
                f"{pair.mac_address} is not the port's ({mac}): only the port's own MAC is "
                "supported"
            )


def _native(model: type[PortCreate] | type[PortUpdate], data: dict[str, Any]) -> Any:
    """The native request model, its validation errors as Neutron's 400 naming the field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        field = {"ipv4": "fixed_ips", "port_security": "port_security_enabled"}.get(where, where)
        field = "allowed_address_pairs" if where.startswith("allowed_addresses") else field
        raise NeutronBadRequest(f"Invalid input for {field}. Reason: {first['msg']}") from None


def _on_subnet(address: str, subnet: Network | None) -> bool:
    """Whether `address` is an IPv4 address of the subnet (a malformed one is left to the
    native check, which says what is wrong with it)."""
    if subnet is None:
        return False
    try:
        return IPv4Address(address) in IPv4Network(subnet.subnet)
    except ValueError:
        return True
