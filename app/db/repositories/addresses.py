"""The IPv4 addresses kvmnetd itself gives out (link addresses, gateways, fixed addresses
of VM NICs and ports)."""

from __future__ import annotations

from ipaddress import IPv4Interface

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Bridge, Network, Port, Tap, Vm, VmNic
from app.db.repositories.base import LINK_MODELS
from app.db.repositories.segments import (
    network_interfaces,
    network_ref,
    preload_objects,
    readable_segment,
)
from app.domain.networks import AddressHolder
from app.domain.segments import SegmentKind


def vlan_l3_interfaces(session: Session) -> dict[str, str]:
    """VLAN id -> the name of its L3 interface (where a host address on it lives), for
    the VLANs that carry a managed network (their segments decide it)."""
    return network_interfaces(session, SegmentKind.VLAN)


def _gateway(row: Network) -> str:
    return f"{row.gateway}/{row.subnet.split('/')[1]}"


def _live_networks(session: Session) -> list[Network]:
    networks = list(session.scalars(select(Network).where(Network.deleted.is_(False))))
    preload_objects(session, networks)
    return networks


def network_gateways(session: Session) -> dict[str, str]:
    """Segment object id (a bridge's, tap's or VLAN's) -> the gateway address (with prefix)
    its managed network puts on the segment's L3 interface."""
    result: dict[str, str] = {}
    for row in _live_networks(session):
        ref = network_ref(row)
        result[ref[1] if ref is not None else ""] = _gateway(row)
    return result


def network_addresses(session: Session) -> list[tuple[Network, str | None, str]]:
    """(network, the L3 interface of its segment or None, gateway with prefix) of every
    live network."""
    result = []
    for row in _live_networks(session):
        segment = readable_segment(session, row)
        result.append((row, segment.l3_interface if segment else None, _gateway(row)))
    return result


def own_addresses(session: Session) -> dict[str, list[str]]:
    """Kernel link name -> the IPv4 addresses (`a.b.c.d/len`) kvmnetd itself puts on it: a bridge's
    or tap's `addresses` and its network's gateway (not what an uplink moved onto a bridge:
    those are the LAN's)."""
    result: dict[str, list[str]] = {}
    for model in LINK_MODELS:
        for name, addresses in session.execute(select(model.ifname, model.addresses)):
            result[name] = _stored_ipv4(addresses)
    for _, interface, gateway in network_addresses(session):
        if interface is not None:
            result.setdefault(interface, []).append(gateway)
    return result


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


def fixed_addresses(session: Session, network_id: str) -> set[str]:
    """The fixed addresses given out on a managed network: its VM NICs' and its ports'
    (the two tables share one address space per network: the allocator's `taken`)."""
    nics = select(VmNic.ipv4).where(VmNic.network_id == network_id, VmNic.ipv4.is_not(None))
    ports = select(Port.ipv4).where(Port.network_id == network_id, Port.ipv4.is_not(None))
    return {a for a in session.scalars(nics.union_all(ports)) if a}


def address_holders(session: Session, exclude_link_id: str | None = None) -> list[AddressHolder]:
    """Every IPv4 address kvmnetd has given out (app.domain.networks.AddressHolder): live
    networks' gateways, VM NICs' fixed addresses, and the addresses of live bridges and
    taps other than `exclude_link_id` (the link being checked)."""
    ifnames: dict[str, str] = {}  # link row id -> its kernel name (what `link` names)
    held: list[AddressHolder] = []
    for model, kind in ((Bridge, "bridge"), (Tap, "tap")):
        query = select(
            model.id, model.name, model.ifname, model.addresses, model.deleted, model.project_id
        )
        for row_id, name, ifname, addresses, deleted, project in session.execute(query):
            ifnames[row_id] = ifname
            if deleted or row_id == exclude_link_id:
                continue
            held += [AddressHolder(kind, name, ifname, a, project) for a in _stored_ipv4(addresses)]
    for network, interface, gateway in network_addresses(session):
        held.append(
            AddressHolder("network", network.name, interface or "?", gateway, network.project_id)
        )
    nics = (
        select(Vm.name, VmNic.position, VmNic.bridge_id, VmNic.tap_id, VmNic.ipv4, Vm.project_id)
        .join(Vm, Vm.id == VmNic.vm_id)
        .where(VmNic.ipv4.is_not(None))
    )
    for vm, position, bridge_id, tap_id, ipv4, project in session.execute(nics):
        link = ifnames.get(bridge_id or tap_id or "", "?")
        name = f"VM {vm!r} NIC {position}"
        held.append(AddressHolder("vm_nic", name, link, f"{ipv4}/32", project))
    ports = select(Port.name, Port.ipv4, Port.project_id, Port.bridge_id).where(
        Port.ipv4.is_not(None), Port.deleted.is_(False)
    )
    for name, ipv4, project, bridge_id in session.execute(ports):
        link = ifnames.get(bridge_id or "", "?")
        held.append(AddressHolder("port", name, link, f"{ipv4}/32", project))
    return held
