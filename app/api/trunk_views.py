"""A bridge's live views (ports, MAC table, per-port VLAN membership) as an operator needs
them on a trunk of either VLAN backend (issue 10, "See it").

With vlan_filtering the VLANs' ports are ports of the trunk, and the kernel's own views of it
(`bridge vlan show`, `bridge fdb show br br0`) tell everything. With bridge_per_vlan they sit
on the VLANs' own bridges (`br0v20`: the uplink's `eth0.20` and the VLAN's taps), which are
no bridge resources; the trunk's views include those bridges' ports and tables, each row
naming the bridge it really is in (`via`) and its VLAN, so that one GET on the trunk answers
"what is on my VLANs" on both backends. A bridge without VLANs shows exactly its own. The
kernel is asked by the links' kernel names (`ifname`), and the views name links that way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from app.api.deps import AppContext
from app.db.models import Bridge
from app.domain.tenancy import Caller
from app.domain.vlans import VlanBridge
from app.schemas.links import BridgeVlans, FdbEntry, PortVlan
from app.services.scoping import unseen_owners
from app.services.vlans import VlanService


async def _vlan_bridges(ctx: AppContext, trunk_ids: Sequence[str]) -> dict[str, list[VlanBridge]]:
    return await ctx.read(lambda s: VlanService(s).vlan_bridges(trunk_ids))


async def ports_of(
    ctx: AppContext, rows: Sequence[Bridge], caller: Caller
) -> dict[str, list[dict[str, Any]]]:
    """Bridge id -> its ports as the kernel reports them now, then (`via`, `vlan`) those of
    its bridge_per_vlan VLANs' bridges by VID; one kernel-filtered dump per bridge. A port
    whose owner (a tap, a VM's NIC) is another project's, which `caller` may not see (a
    bridge shared with that project), shows neither its `tap_id` nor `managed_by`."""
    vlan_bridges = await _vlan_bridges(ctx, [r.id for r in rows])
    names = [r.ifname for r in rows] + [v.bridge for vs in vlan_bridges.values() for v in vs]
    ports = await ctx.host(ctx.inspector.ports_of, names)
    views = {r.id: _with_vias(r.ifname, ports, vlan_bridges.get(r.id, [])) for r in rows}
    owners = {
        (p["managed_by"]["resource"], p["managed_by"]["id"])
        for found in views.values()
        for p in found
        if p.get("managed_by")
    }
    if owners and not caller.is_admin:
        hidden = await ctx.read(lambda s: unseen_owners(s, caller.scope, owners))
        for found in views.values():
            for port in found:
                if port.get("managed_by") and port["managed_by"]["id"] in hidden:
                    port.update(tap_id=None, managed_by=None)
    return views


def _with_vias(
    bridge: str, found: Mapping[str, list[dict[str, Any]]], vlan_bridges: Sequence[VlanBridge]
) -> list[dict[str, Any]]:
    return [
        *found.get(bridge, []),
        *(
            {**entry, "via": v.bridge, "vlan": v.vid}
            for v in vlan_bridges
            for entry in found.get(v.bridge, [])
        ),
    ]


async def fdb(ctx: AppContext, row: Bridge) -> list[FdbEntry]:
    """The bridge's MAC table, then those of its VLANs' own bridges (`via`; `vlan`: the
    VID of that bridge, where the kernel reports none)."""
    vlan_bridges = (await _vlan_bridges(ctx, [row.id])).get(row.id, [])
    tables = await ctx.host(ctx.inspector.fdb_of, [row.ifname, *(v.bridge for v in vlan_bridges)])
    return [FdbEntry(**e) for e in _with_vias(row.ifname, tables, vlan_bridges)]


async def vlans(ctx: AppContext, row: Bridge) -> BridgeVlans:
    """Per-port VLAN membership: the bridge's own ports while it filters VLANs (`bridge -j
    vlan show`), then every port of its VLANs' own bridges on the VLAN's VID."""
    live = await ctx.host(ctx.inspector.bridge_vlans, row.ifname)
    ports = await _own_port_vlans(ctx, row, live)
    vlan_bridges = (await _vlan_bridges(ctx, [row.id])).get(row.id, [])
    if vlan_bridges:
        ports += await _per_vlan_port_vlans(ctx, row, vlan_bridges)
    return BridgeVlans(
        bridge=row.ifname,
        filtering_available=live["filtering"] is not None,
        vlan_filtering=bool(live["filtering"]),
        default_pvid=live["default_pvid"],
        reason=live["reason"],
        ports=ports,
    )


async def _own_port_vlans(ctx: AppContext, row: Bridge, live: dict[str, Any]) -> list[PortVlan]:
    planned = {}
    if live["filtering"]:
        pvid = int(live["default_pvid"] or 0)
        planned = await ctx.read(lambda s: VlanService(s).planned_ports(row.id, pvid))
    return [
        PortVlan(
            port=port,
            ours=port in planned,
            planned=port in planned
            and planned[port].get(m["vid"]) is not None
            and (planned[port][m["vid"]].pvid, planned[port][m["vid"]].untagged)
            == (m["pvid"], m["untagged"]),
            **m,
        )
        for port, members in sorted(live["ports"].items())
        for m in members
    ]


async def _per_vlan_port_vlans(
    ctx: AppContext, row: Bridge, vlan_bridges: Sequence[VlanBridge]
) -> list[PortVlan]:
    """A per-VLAN bridge does not filter: each of its ports carries the VLAN, untagged
    inside the bridge (its `<uplink>.<vid>` port adds and strips the tag on the wire), so
    each port is one row: the VID, pvid and untagged. `ours`: kvmnetd made the port (its
    mark); `planned`: kvmnetd wants it in that bridge (the VLAN's taps, the uplink's
    sub-interface)."""
    planned = await ctx.read(lambda s: VlanService(s).planned_bridge_ports(row.id))
    found = await ctx.host(ctx.inspector.ports_of, [v.bridge for v in vlan_bridges])
    return [
        PortVlan(
            port=port["name"],
            vid=v.vid,
            pvid=True,
            untagged=True,
            ours=port.get("managed_by") is not None or port["name"] in planned.get(v.bridge, ()),
            planned=port["name"] in planned.get(v.bridge, ()),
            via=v.bridge,
        )
        for v in vlan_bridges
        for port in found.get(v.bridge, [])
    ]


async def _trunk_of(ctx: AppContext, caller: Caller, vlan_ref: str) -> tuple[Bridge | None, int]:
    """The VLAN's trunk row (None once it is gone) and its VID; 404 for an unknown VLAN
    (one of a project the caller does not see too)."""

    return await ctx.read(lambda s: VlanService(s, caller).trunk_and_vid(vlan_ref))


async def vlan_fdb(ctx: AppContext, caller: Caller, vlan_ref: str) -> list[FdbEntry]:
    """The VLAN's MAC table: the entries of its trunk's view (fdb) on its VID, on either
    backend (NDA_VLAN on a filtering trunk; the VLAN's own bridge with bridge_per_vlan)."""
    trunk, vid = await _trunk_of(ctx, caller, vlan_ref)
    return [] if trunk is None else [e for e in await fdb(ctx, trunk) if e.vlan == vid]


async def vlan_ports(ctx: AppContext, caller: Caller, vlan_ref: str) -> list[PortVlan]:
    """The VLAN's ports: the rows of its trunk's membership view (vlans) on its VID."""
    trunk, vid = await _trunk_of(ctx, caller, vlan_ref)
    return [] if trunk is None else [p for p in (await vlans(ctx, trunk)).ports if p.vid == vid]
