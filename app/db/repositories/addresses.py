"""The IPv4 addresses kvmnetd itself gives out (link addresses, gateways, fixed NIC
addresses)."""

from __future__ import annotations

from ipaddress import IPv4Interface

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Bridge, Network, Tap, Vlan, Vm, VmNic
from app.db.repositories.base import LINK_MODELS
from app.domain.networks import AddressHolder
from app.domain.vlans import VlanBackend, l3_interface_name


def vlan_l3_interfaces(session: Session) -> dict[str, str]:
    """VLAN id -> the name of its L3 interface (where a host address on it lives), for
    the VLANs that carry a managed network."""
    query = (
        select(Vlan.id, Vlan.backend, Vlan.vlan_id, Bridge.name)
        .join(Bridge, Bridge.id == Vlan.trunk_id)
        .join(Network, Network.vlan_id == Vlan.id)
    )
    return {
        vlan_id: l3_interface_name(VlanBackend(backend), trunk, vid)
        for vlan_id, backend, vid, trunk in session.execute(query)
    }


def network_gateways(session: Session) -> dict[str, str]:
    """Link (or VLAN) id -> the gateway address (with prefix) its managed network puts on it
    (a VLAN's: on the VLAN's L3 interface)."""
    query = select(
        Network.bridge_id, Network.tap_id, Network.vlan_id, Network.gateway, Network.subnet
    ).where(Network.deleted.is_(False))
    result: dict[str, str] = {}
    for bridge_id, tap_id, vlan_id, gateway, subnet in session.execute(query):
        result[bridge_id or tap_id or vlan_id or ""] = f"{gateway}/{subnet.split('/')[1]}"
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
    for vlan_id, name in vlan_l3_interfaces(session).items():
        if vlan_id in gateways:
            result.setdefault(name, []).append(gateways[vlan_id])
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
    names.update({k: ("vlan", v) for k, v in vlan_l3_interfaces(session).items()})
    networks = select(
        Network.name,
        Network.bridge_id,
        Network.tap_id,
        Network.vlan_id,
        Network.gateway,
        Network.subnet,
    ).where(Network.deleted.is_(False))
    for name, bridge_id, tap_id, vlan_id, gateway, subnet in session.execute(networks):
        link = names.get(bridge_id or tap_id or vlan_id or "", ("", "?"))[1]
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
