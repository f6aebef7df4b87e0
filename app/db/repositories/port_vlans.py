"""Ports on VLANs in the database: where a port's tap goes (its master), the per-port VLAN
membership a VLAN-filtering trunk should have, and what uses a VLAN.

A port is a VM NIC's tap (bridge backend) or one of our tap resources. An access port of a
VLAN (`vlan_id`) joins, by the VLAN's backend (app.domain.vlans):
- bridge_per_vlan: the VLAN's own bridge (`vlan_bridge_name(trunk, vid)`), untagged; the
  trunk itself never sees the port;
- vlan_filtering: the trunk, as an access port (PVID + untagged, `bridge vlan add ... pvid
  untagged`); a trunk NIC joins the trunk carrying its VIDs tagged and its native VID as PVID
  untagged (app.domain.vlan_ports.trunk_port).
The link worker reads `tap_port_vlans` to reconcile membership (bridge(8) `bridge vlan`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Bridge, Network, Tap, Vlan, Vm, VmNic
from app.domain.errors import InvalidInput
from app.domain.segments import SegmentKind, SegmentObject, describe
from app.domain.status import Status
from app.domain.vlan_ports import Membership, access_port, trunk_port
from app.domain.vlans import VlanBackend

if TYPE_CHECKING:
    from app.db.repositories.links import BridgeFacts


def vlan_masters(session: Session, bridges: Mapping[str, BridgeFacts]) -> dict[str, BridgeFacts]:
    """VLAN row id -> the bridge its access ports join (name, and the MTU it keeps: the
    trunk's): its segment's master (app.domain.segments.vlan: the per-VLAN bridge with
    bridge_per_vlan, the trunk with vlan_filtering). A VLAN whose trunk is not in `bridges`
    is left out, and so are one its driver cannot place (its backend unknown) and a
    vlan_filtering VLAN in `error` (its trunk may not filter: a port there would be untagged
    on the trunk, on no VLAN at all); their ports join no bridge."""
    masters: dict[str, BridgeFacts] = {}
    for row_id, name, trunk_id, vid, backend, status in session.execute(
        select(Vlan.id, Vlan.name, Vlan.trunk_id, Vlan.vlan_id, Vlan.backend, Vlan.status)
    ):
        trunk = bridges.get(trunk_id)
        failed_filtering = (
            backend == VlanBackend.VLAN_FILTERING.value and status == Status.ERROR.value
        )
        if trunk is None or failed_filtering:
            continue
        obj = SegmentObject(
            SegmentKind.VLAN.value, row_id, name, trunk=trunk.name, vid=vid, backend=backend
        )
        try:
            master = describe(obj).master
        except InvalidInput:  # a row its driver cannot read: its ports join no bridge
            continue
        if master is not None:
            masters[row_id] = replace(trunk, name=master)
    return masters


def port_master(
    bridge_id: str | None, vlan_id: str | None, bridges: Mapping[str, BridgeFacts]
) -> BridgeFacts | None:
    """The bridge a port's tap joins: its VLAN's (`bridges` as bridge_facts() gives them,
    with the VLANs' masters under their ids), else its own bridge; None: no bridge (routed),
    or its bridge's row is gone, or its VLAN has no bridge to offer (vlan_masters): a port
    of a VLAN never falls back to its trunk untagged."""
    if vlan_id is not None:
        return bridges.get(vlan_id)
    return bridges.get(bridge_id) if bridge_id else None


def _access_vids(session: Session, trunk_id: str) -> dict[str, int]:
    """VLAN row id -> the VID its ports are access ports of on the trunk itself (its
    segment's `access_vid`: the trunk's live VLANs when it filters VLANs; none with
    bridge_per_vlan, whose ports sit untagged on per-VLAN bridges)."""
    query = (
        select(Vlan.id, Vlan.name, Vlan.vlan_id, Vlan.backend, Bridge.ifname)
        .join(Bridge, Bridge.id == Vlan.trunk_id)
        .where(Vlan.trunk_id == trunk_id, Vlan.deleted.is_(False))
    )
    vids: dict[str, int] = {}
    for row_id, name, vid, backend, trunk in session.execute(query):
        obj = SegmentObject(
            SegmentKind.VLAN.value, row_id, name, trunk=trunk, vid=vid, backend=backend
        )
        with contextlib.suppress(InvalidInput):  # a row its driver cannot read: no port
            access = describe(obj).access_vid
            if access is not None:
                vids[row_id] = access
    return vids


def tap_port_vlans(session: Session, trunk_id: str) -> dict[str, dict[int, Membership]]:
    """The desired VLAN membership of the taps on a VLAN-filtering trunk: tap name -> VID
    -> membership. Access ports (tap resources and bridge NICs on a VLAN) get their VID as
    PVID + untagged; trunk NICs their tagged VIDs plus the native one as PVID + untagged.
    Taps on no VLAN are not listed (left as the kernel made them: the bridge's default
    PVID), nor NICs of VMs being deleted, nor VIDs whose VLAN is being deleted. Empty for a
    trunk that does not filter VLANs (bridge_per_vlan: its ports sit on per-VLAN bridges).
    Taps by their kernel names (ifname)."""
    vids = _access_vids(session, trunk_id)
    if not vids:
        return {}
    ports: dict[str, dict[int, Membership]] = {}
    taps = select(Tap.ifname, Tap.vlan_id).where(
        Tap.bridge_id == trunk_id, Tap.vlan_id.is_not(None), Tap.deleted.is_(False)
    )
    for name, vlan_id in session.execute(taps):
        if vlan_id in vids:
            ports[name] = access_port(vids[vlan_id])
    nics = (
        select(VmNic)
        .join(Vm, Vm.id == VmNic.vm_id)
        .where(VmNic.bridge_id == trunk_id, VmNic.tap_name.is_not(None), Vm.deleted.is_(False))
    )
    live = set(vids.values())
    for nic in session.scalars(nics):
        assert nic.tap_name is not None
        if nic.vlan_id is not None and nic.vlan_id in vids:
            ports[nic.tap_name] = access_port(vids[nic.vlan_id])
        elif isinstance(nic.vlan_tagged, list) and nic.vlan_tagged:
            native = nic.native_vlan if nic.native_vlan in live else None
            ports[nic.tap_name] = trunk_port([v for v in nic.vlan_tagged if v in live], native)
    return ports


def vlan_users(session: Session, vlan: Vlan) -> tuple[list[tuple[VmNic, Vm]], Sequence[Tap]]:
    """What uses a VLAN (in-use protection): NICs of live VMs that are access ports of it or
    trunk NICs carrying its VID (tagged or native), by VM name and position; and live taps
    that are access ports of it, by name."""
    query = (
        select(VmNic, Vm)
        .join(Vm, Vm.id == VmNic.vm_id)
        .where(Vm.deleted.is_(False), VmNic.bridge_id == vlan.trunk_id)
        .order_by(Vm.name, VmNic.position)
    )
    nics = [
        (nic, vm)
        for nic, vm in session.execute(query)
        if nic.vlan_id == vlan.id
        or nic.native_vlan == vlan.vlan_id
        or (isinstance(nic.vlan_tagged, list) and vlan.vlan_id in nic.vlan_tagged)
    ]
    taps = session.scalars(
        select(Tap).where(Tap.vlan_id == vlan.id, Tap.deleted.is_(False)).order_by(Tap.name)
    ).all()
    return nics, taps


def vlan_referrers(session: Session, vlan_id: str) -> list[str]:
    """Rows that still point at a VLAN row (any VM, deleted or not; any tap; a live network):
    while one does, the row must stay (foreign keys, and a live network must keep its link:
    CHECK ck_networks_one_link), even once its kernel objects are gone. A deleted network
    may outlive its VLAN briefly, as it may its bridge (its vlan_id becomes NULL)."""
    taps = session.scalars(select(Tap.name).where(Tap.vlan_id == vlan_id))
    nics = session.execute(
        select(Vm.name, VmNic.position)
        .join(Vm, Vm.id == VmNic.vm_id)
        .where(VmNic.vlan_id == vlan_id)
        .order_by(Vm.name, VmNic.position)
    )
    networks = session.scalars(
        select(Network.name).where(Network.vlan_id == vlan_id, Network.deleted.is_(False))
    )
    return [
        *(f"tap {t}" for t in taps),
        *(f"vm_nic {vm}/{pos}" for vm, pos in nics),
        *(f"network {n}" for n in networks),
    ]


def access_port_names(session: Session, vlan_ids: Sequence[str]) -> dict[str, set[str]]:
    """VLAN row id -> the kernel names of the taps planned as its access ports: live tap resources
    on it and the taps of live VMs' NICs on it (with bridge_per_vlan, the ports its own
    bridge should have besides the uplink's sub-interface)."""
    found: dict[str, set[str]] = {vlan_id: set() for vlan_id in vlan_ids}
    taps = select(Tap.vlan_id, Tap.ifname).where(
        Tap.vlan_id.in_(list(vlan_ids)), Tap.deleted.is_(False)
    )
    nics = (
        select(VmNic.vlan_id, VmNic.tap_name)
        .join(Vm, Vm.id == VmNic.vm_id)
        .where(VmNic.vlan_id.in_(list(vlan_ids)), Vm.deleted.is_(False))
    )
    for query in (taps, nics):
        for vlan_id, name in session.execute(query):
            if vlan_id is not None and name is not None:
                found[vlan_id].add(name)
    return found
