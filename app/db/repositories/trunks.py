"""Filtering trunks that kvmnetd switched on: the mark that says so, the trunks whose last
filtering VLAN went (their filtering goes off again), and the membership their ports go
back to first (what the kernel gives a port joining a filtering bridge: the default PVID,
untagged; net/bridge/br_vlan.c nbp_vlan_init)."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db.models import Bridge, Tap, Uplink, Vlan, Vm, VmNic
from app.domain.vlan_ports import BridgeVlans, on_join
from app.domain.vlans import VlanBackend


def mark_filtering_ours(session: Session, trunk_id: str, ours: bool) -> None:
    """Record (before switching it on) or forget (after switching it off) that the
    supervisor turned the trunk's vlan_filtering on."""
    session.execute(update(Bridge).where(Bridge.id == trunk_id).values(vlan_filtering_ours=ours))


def trunks_to_release(session: Session) -> list[tuple[str, str]]:
    """(id, kernel name) of the bridges whose filtering we switched on and on which no filtering
    VLAN row is left (one being deleted still needs its membership removed first)."""
    filtering_vlans = select(Vlan.trunk_id).where(Vlan.backend == VlanBackend.VLAN_FILTERING.value)
    query = (
        select(Bridge.id, Bridge.ifname)
        .where(Bridge.vlan_filtering_ours.is_(True), Bridge.id.not_in(filtering_vlans))
        .order_by(Bridge.ifname)
    )
    return [(row_id, name) for row_id, name in session.execute(query)]


def released_port_vlans(session: Session, trunk_id: str, default_pvid: int) -> BridgeVlans:
    """What the trunk's ports of ours carry once no VLAN of ours is on it: the bridge's own
    port, its uplink and our taps on it (tap resources and VM NICs) as a port joining a
    filtering bridge gets them: `default_pvid` as PVID untagged (nothing when it is 0).
    Ports not ours are not named, so they are never touched. Links by kernel name."""
    trunk = session.scalar(select(Bridge.ifname).where(Bridge.id == trunk_id))
    if trunk is None:
        return {}
    ports = [trunk]
    ports += session.scalars(select(Uplink.name).where(Uplink.bridge_id == trunk_id))
    ports += session.scalars(select(Tap.ifname).where(Tap.bridge_id == trunk_id))
    nics = (
        select(VmNic.tap_name)
        .join(Vm, Vm.id == VmNic.vm_id)
        .where(VmNic.bridge_id == trunk_id, VmNic.tap_name.is_not(None))
    )
    ports += [name for name in session.scalars(nics) if name is not None]
    return {port: on_join(default_pvid) for port in ports}
