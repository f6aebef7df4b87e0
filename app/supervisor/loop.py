"""The supervisor thread: serial reconcile passes driven by nudges, netlink and a timer.
Bridge uplinks are reconciled on the same thread, right after the links, then VLANs
(app.supervisor.vlans), then filtering trunks no VLAN needs any more (app.supervisor.trunks).

One thread runs every pass, so no object is ever reconciled twice at once. It wakes when the
API nudges it (desired state changed), when the link monitor reports a change to one of our
links (drift), when it reports a port of ours whose isolation flag someone changed (`bridge
link set`, reported only as the bridge's AF_BRIDGE message), when it reports a planned port
of a filtering trunk with another VLAN membership than the one last settled, or the trunk's
filtering off (app.supervisor.trunks: that trunk alone is looked at, TRUNK_DELAY after the
first report, so a burst of `bridge vlan` changes is one pass), when a backed-off retry is
due, and every `interval` seconds for a full resync, which also sweeps orphans. A pass that
makes a master usable again (a bridge set up or re-created, or out of error; a VLAN out of
error or repaired) wakes the ports held off it at once: a pass over those taps alone (their
backoff reset), and the VM worker for the VMs with a NIC there; a master that stays broken
wakes nothing, so a wake-up never loops. An unexpected error that fails a whole pass
schedules an early full resync after a backoff that grows while the failure persists (never
a hot loop), and is logged at a bounded rate (app.supervisor.faults).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import replace

from app.bus import EventBus
from app.db.repositories import held_ports
from app.db.session import Database
from app.domain.links import fingerprint, parse_mark
from app.domain.retry import Backoff
from app.host.monitor import LinkMonitor
from app.host.netlink import LinkOps, observed
from app.host.netns import enter_for_this_thread
from app.host.rtnl import PortVlans, RawAddress, RawLink
from app.host.vlans import VlanOps
from app.supervisor.faults import FaultLog
from app.supervisor.links import LinkReconciler, Scope
from app.supervisor.trunks import TrunkReleaser, TrunkWatch
from app.supervisor.uplinks import UplinkReconciler
from app.supervisor.vlans import VlanReconciler

log = logging.getLogger(__name__)

# a change of operational state alone is looked at this long after it is reported: a port
# joining a bridge toggles the bridge's state and back within milliseconds (and our own
# creates pass through "unknown"), so reports coalesce into one read of what stayed
OPER_STATE_DELAY = 0.1
PASS_KEY = "pass"  # the backoff key of whole-pass failures
# a trunk's VLAN membership is looked at this long after netlink first reports it changed:
# a script removing several VIDs, and the steps of our own repair, coalesce into one pass
TRUNK_DELAY = 0.05


class Supervisor:
    def __init__(
        self,
        db: Database,
        bus: EventBus,
        interval: float,
        netns: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.bus = bus
        self.interval = interval
        self.netns = netns
        self.clock = clock
        self.ready = threading.Event()
        self.passes = 0
        # a timing hook (read by bench/vlans.py; nothing acts on it): how many full passes
        # (links, uplinks, VLANs; with the orphan sweep) have finished, and the wall time of
        # the last one in seconds (time.perf_counter, not the injected clock)
        self.full_passes = 0
        self.last_full_pass_s: float | None = None
        self._wake = threading.Condition()
        self._dirty = True
        self._names: set[str] = set()
        self._oper_names: set[str] = set()
        self._oper_due: float | None = None
        self._trunks: set[str] = set()
        self._trunks_due: float | None = None
        self._full_requested = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.trunk_watch = TrunkWatch()
        self._monitor = LinkMonitor(
            self._on_link, self._on_address, netns, self._watched, self._on_port_vlans
        )
        self._reconciler: LinkReconciler | None = None
        # told which VMs have a NIC on a master that became usable again (the VM worker
        # puts their taps back on it: app.supervisor.vms)
        self._on_ports_held: list[Callable[[set[str]], None]] = []

    # ---- control ---------------------------------------------------------------------------

    def start(self) -> None:
        self._monitor.start()
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        self._monitor.stop()

    def nudge(self) -> None:
        """Desired state changed: run a pass over unsettled resources soon."""
        with self._wake:
            self._dirty = True
            self._wake.notify()

    def on_ports_held(self, callback: Callable[[set[str]], None]) -> None:
        """Call `callback(vm ids)` (from the supervisor thread) when a master those VMs have
        a NIC on became usable again."""
        self._on_ports_held.append(callback)

    def resync(self) -> None:
        """Ask for a full pass (with orphan sweep) now."""
        with self._wake:
            self._full_requested = True
            self._wake.notify()

    # ---- netlink ---------------------------------------------------------------------------

    def _watched(self, index: int) -> bool:
        """Notifications about links we have settled are decoded; the rest (e.g. links we
        are creating right now) are skipped unread."""
        reconciler = self._reconciler
        return reconciler is not None and index in reconciler.names_by_index

    def _on_link(self, link: RawLink) -> None:
        trunk = self.trunk_watch.filtering_dropped(link)
        if trunk is not None:
            self._recheck_trunk(trunk)
        reconciler = self._reconciler
        if reconciler is None or not link.name or link.name not in reconciler.expected:
            return
        if link.event == "new":
            ours = parse_mark(link.alias) is not None
            expected = reconciler.expected.get(link.name)
            seen = fingerprint(observed(link))
            if ours and expected == seen:
                return  # our own change, or nothing we look at changed
            if (
                ours
                and expected is not None
                and replace(seen, oper_state=None) == replace(expected, oper_state=None)
            ):
                self._observe_oper_state(link.name)
                return
        self._repair(link.name)

    def _observe_oper_state(self, name: str) -> None:
        with self._wake:
            self._oper_names.add(name)
            if self._oper_due is None:
                self._oper_due = self.clock() + OPER_STATE_DELAY
                self._wake.notify()

    def _on_port_vlans(self, port: PortVlans) -> None:
        trunk = self.trunk_watch.drifted(port)
        if trunk is not None:
            self._recheck_trunk(trunk)
        self._check_port_isolation(port)

    def _check_port_isolation(self, port: PortVlans) -> None:
        """`bridge link set dev X isolated on|off` is reported only as the bridge's
        AF_BRIDGE message (its IFLA_PROTINFO): a port of ours whose flag differs from the
        one last settled is repaired at once."""
        reconciler = self._reconciler
        if reconciler is None or port.isolated is None or port.event != "new":
            return
        name = reconciler.names_by_index.get(port.index)
        expected = reconciler.expected.get(name) if name is not None else None
        if expected is not None and expected.port_isolated not in (None, port.isolated):
            assert name is not None
            self._repair(name)

    def _recheck_trunk(self, trunk_id: str) -> None:
        with self._wake:
            self._trunks.add(trunk_id)
            if self._trunks_due is None:
                self._trunks_due = self.clock() + TRUNK_DELAY
                self._wake.notify()

    def _on_address(self, address: RawAddress) -> None:
        reconciler = self._reconciler
        name = reconciler.names_by_index.get(address.index) if reconciler else None
        if name is not None:
            self._repair(name)

    def _repair(self, name: str) -> None:
        with self._wake:
            self._names.add(name)
            self._wake.notify()

    # ---- the loop --------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = Backoff(self.clock)
        pass_backoff = Backoff(self.clock, base=1.0, cap=self.interval)
        faults = FaultLog(log, self.clock)
        enter_for_this_thread(self.netns)  # tap ioctls act in the thread's namespace
        # pyroute2 sockets belong to the thread that opens them
        with LinkOps() as ops, VlanOps(ours_only=True) as vlan_ops:
            self._reconciler = LinkReconciler(self.db, self.bus, ops, backoff)
            vlans = VlanReconciler(self.db, self.bus, vlan_ops, backoff, self.trunk_watch)
            releaser = TrunkReleaser(self.db, vlan_ops, self.trunk_watch)
            uplinks = UplinkReconciler(
                self.db, self.bus, ops.ipr, on_gone=self.nudge, on_moved=self._repair
            )
            next_full = self.clock()
            while True:
                scope, names, trunks = self._next_work(next_full, backoff)
                if scope is None:
                    return
                started = time.perf_counter()
                try:
                    self._reconciler.run(scope, names)
                    if scope is not Scope.NAMES:
                        uplinks.run(full=scope is Scope.FULL)
                    # after the uplinks: a filtering trunk's uplink is then its port
                    vlans.run(
                        scope, self._reconciler.vlan_ids, self._reconciler.vlan_outcomes, trunks
                    )
                    if scope is not Scope.NAMES:
                        releaser.run()
                    self._wake_held(self._reconciler.recovered, vlans.recovered, backoff)
                    if scope is Scope.FULL:
                        next_full = self.clock() + self.interval
                        pass_backoff.succeeded(PASS_KEY)
                        faults.succeeded(PASS_KEY, "the link reconcile pass")
                        self.ready.set()
                        self.last_full_pass_s = time.perf_counter() - started
                        self.full_passes += 1
                except Exception as exc:
                    # the work of this pass is redone by the full resync, after a backoff
                    faults.failed(PASS_KEY, f"the {scope.value} link reconcile pass", exc)
                    next_full = self.clock() + pass_backoff.failed(PASS_KEY)
                self.passes += 1

    def _wake_held(
        self, bridge_ids: Collection[str], vlan_ids: Collection[str], backoff: Backoff
    ) -> None:
        """The ports held off masters this pass made usable again are looked at next, not
        at the next full pass: the taps (their backoff reset: their master is back) in a
        pass of their own, the VMs' NIC taps by the VM worker; and the filtering VLANs on a
        bridge that is back (a trunk re-created has no filtering and no memberships), whose
        own recovery then wakes their ports."""
        if not bridge_ids and not vlan_ids:
            return
        for bridge_id in bridge_ids:  # a trunk back: its filtering VLANs are looked at now
            self._recheck_trunk(bridge_id)
        with self.db.reading() as session:
            held = held_ports(session, sorted(bridge_ids), sorted(vlan_ids))
        if held.taps:
            log.info(
                "master(s) usable again; looking at their ports %s", ", ".join(held.taps.values())
            )
            for tap_id in held.taps:
                backoff.succeeded(tap_id)
            with self._wake:
                self._names |= set(held.taps.values())
        if held.vm_ids:
            for callback in self._on_ports_held:
                callback(held.vm_ids)

    def _next_work(
        self, next_full: float, backoff: Backoff
    ) -> tuple[Scope | None, set[str], set[str]]:
        """The next pass: its scope, the link names (NAMES) and filtering trunk ids (NAMES)
        netlink reported."""
        with self._wake:
            while not self._stopping:
                now = self.clock()
                if self._full_requested or now >= next_full:
                    self._full_requested = self._dirty = False
                    self._names.clear()
                    self._oper_names, self._oper_due = set(), None
                    self._trunks, self._trunks_due = set(), None
                    return Scope.FULL, set(), set()
                if self._oper_due is not None and now >= self._oper_due:
                    self._names |= self._oper_names
                    self._oper_names, self._oper_due = set(), None
                trunks: set[str] = set()
                if self._trunks_due is not None and now >= self._trunks_due:
                    trunks, self._trunks, self._trunks_due = self._trunks, set(), None
                if self._names or trunks:
                    names, self._names = self._names, set()
                    return Scope.NAMES, names, trunks
                retry_at = backoff.next_due()
                if self._dirty or (retry_at is not None and now >= retry_at):
                    self._dirty = False
                    return Scope.DIRTY, set(), set()
                due = (next_full, retry_at, self._oper_due, self._trunks_due)
                wake_at = min(t for t in due if t is not None)
                self._wake.wait(timeout=max(0.0, wake_at - now))
            return None, set(), set()
