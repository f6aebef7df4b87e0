"""Filtering trunks between passes: drift noticed the moment the kernel reports it, and
filtering switched off again once no VLAN of ours needs it.

`TrunkWatch` holds, per filtering trunk (by ifindex), the VLAN membership each planned
port had when the VLAN worker (app.supervisor.vlans) last settled it, and whether the trunk
filters. The link monitor's thread asks it about every bridge notification
(app.host.rtnl.PortVlans: `bridge vlan add|del` by hand; a bridge link whose
vlan_filtering went 0): a planned port whose membership differs from the settled one, or a
trunk that stopped filtering, wakes the VLAN worker for that trunk (app.supervisor.loop,
debounced). Our own repair's notifications match what it settles, so a repair wakes the
worker at most once more (a quiet pass that changes nothing and so reports nothing): never
a hot loop. Ports we do not plan, and bridges that are no filtering trunk of ours, are
ignored. The watch is replaced, never mutated, so the monitor's thread reads it unlocked.

`TrunkReleaser` runs after the VLAN worker: a trunk whose filtering we switched on
(`bridges.vlan_filtering_ours`, journaled before the switch) and that has no filtering VLAN
left gets its ports of ours back to the kernel's default membership (the default PVID,
untagged), then vlan_filtering 0, then the mark cleared. A failure is logged (rate-limited)
and retried at the next pass that runs it; a trunk that is gone needs nothing.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from app.db.repositories import mark_filtering_ours, released_port_vlans, trunks_to_release
from app.db.session import Database
from app.domain.vlan_ports import BridgeVlans, plan_bridge
from app.host.netlink import LinkError
from app.host.rtnl import IFLA_BR_VLAN_FILTERING, PortVlans, RawLink
from app.host.vlans import VlanOps
from app.supervisor.faults import FaultLog

log = logging.getLogger(__name__)

PortState = Mapping[int, tuple[bool, bool]]  # vid -> (pvid, untagged), as rtnl decodes it


@dataclass(frozen=True)
class WatchedTrunk:
    trunk_id: str
    name: str
    ports: Mapping[str, PortState]  # planned port (the bridge's own: its name) -> settled
    others: frozenset[str] = frozenset()  # the trunk's ports we do not plan, when settled


def port_state(members: BridgeVlans) -> dict[str, PortState]:
    """Memberships (app.domain.vlan_ports) in the shape the monitor decodes."""
    return {
        port: {vid: (m.pvid, m.untagged) for vid, m in vlans.items()}
        for port, vlans in members.items()
    }


class TrunkWatch:
    """What the filtering trunks' planned ports were settled to, by trunk ifindex."""

    def __init__(self) -> None:
        self._trunks: dict[int, WatchedTrunk] = {}

    def settled(
        self, index: int, trunk_id: str, name: str, planned: BridgeVlans, observed: BridgeVlans
    ) -> None:
        """The trunk's membership step ended with `observed`; the ports it plans
        (`planned`'s keys) are watched, and a port that was no port of the trunk then (a tap
        that joins it later) wakes the trunk once."""
        ports = port_state({port: observed.get(port, {}) for port in planned})
        others = frozenset(observed) - frozenset(planned)
        trunks = {i: t for i, t in self._trunks.items() if t.trunk_id != trunk_id}
        trunks[index] = WatchedTrunk(trunk_id, name, ports, others)
        self._trunks = trunks

    def forget(self, trunk_id: str) -> None:
        self._trunks = {i: t for i, t in self._trunks.items() if t.trunk_id != trunk_id}

    def watched(self) -> set[str]:
        return {t.trunk_id for t in self._trunks.values()}

    def drifted(self, port: PortVlans) -> str | None:
        """The trunk id to look at again when this notification shows a planned port of a
        watched trunk with another membership than the settled one, or a port that joined
        the trunk since it settled (a new tap on a VLAN: its PVID is set at once, not at the
        next full pass). Ports we do not plan that were there are never a reason."""
        if port.event != "new" or port.master is None or port.name is None:
            return None
        trunk = self._trunks.get(port.master)
        if trunk is None:
            return None
        settled = trunk.ports.get(port.name)
        if settled is None:
            return None if port.name in trunk.others else trunk.trunk_id
        if settled == port.vlans:
            return None
        return trunk.trunk_id

    def filtering_dropped(self, link: RawLink) -> str | None:
        """The trunk id when a watched trunk's link now says vlan_filtering 0."""
        trunk = self._trunks.get(link.index)
        if trunk is None or link.event != "new" or link.kind != "bridge":
            return None
        return trunk.trunk_id if link.info_u8(IFLA_BR_VLAN_FILTERING) == 0 else None


class TrunkReleaser:
    """Switches filtering off on the trunks that no VLAN of ours needs any more."""

    def __init__(self, db: Database, ops: VlanOps, watch: TrunkWatch) -> None:
        self.db = db
        self.ops = ops
        self.watch = watch
        self.faults = FaultLog(log)

    def run(self) -> int:
        """Returns how many trunks it released."""
        with self.db.reading() as session:
            trunks = trunks_to_release(session)
        released = 0
        for trunk_id, name in trunks:
            what = f"switching VLAN filtering off on trunk {name}"
            try:
                self._release(trunk_id, name)
            except LinkError as exc:
                self.faults.failed(trunk_id, what, exc)
                continue
            with self.db.unit_of_work() as session:
                mark_filtering_ours(session, trunk_id, False)
            self.faults.succeeded(trunk_id, what)
            released += 1
        return released

    def _release(self, trunk_id: str, name: str) -> None:
        self.watch.forget(trunk_id)  # what follows is ours, not drift
        try:
            options = self.ops.bridge_vlan_options(name)
        except LinkError as exc:
            if exc.code == errno.ENODEV:
                return  # the trunk is gone: nothing filters
            raise
        if not options.filtering:
            return
        with self.db.reading() as session:
            desired = released_port_vlans(session, trunk_id, options.default_pvid)
        observed = self.ops.memberships(name)
        # only ports on the trunk now: a tap of ours elsewhere (or gone) is not its port
        steps = plan_bridge(name, {p: v for p, v in desired.items() if p in observed}, observed)
        if steps:
            log.info("trunk %s: %s", name, "; ".join(s.describe() for s in steps))
            self.ops.apply(name, steps)
        log.info("switching VLAN filtering off on trunk %s: no VLAN of ours needs it", name)
        self.ops.set_bridge_vlan_options(name, filtering=False)
