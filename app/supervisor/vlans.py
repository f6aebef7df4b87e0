"""VLANs made real, right after the link pass on the same thread (app.supervisor.loop).

The links a VLAN owns (bridge_per_vlan: its own bridge and the uplink's 802.1Q
sub-interface) are planned, created, repaired and swept by the link pass like every link of
ours, keyed by the VLAN's id; this module records their outcomes on the VLAN row. A
vlan_filtering VLAN owns a link only while a managed network is on it, its L3 interface
`<bridge>.<vid>` (made by the link pass too; its outcome joins the VLAN's result with the
membership step's, so its failure is the VLAN's status). Per filtering trunk, the trunk gets
vlan_filtering=1 and its planned ports (uplink, the bridge's own port, taps on VLANs) the
membership app.db.repositories.vlans.desired_port_vlans says, read once per pass per trunk
(`bridge vlan show`) and corrected with the steps of app.domain.vlan_ports; ports not
planned are never touched, and planned ports that are not (yet) ports of the trunk are left
until they join. What each trunk's planned ports settled to goes to the TrunkWatch
(app.supervisor.trunks): a membership changed by hand, a planned port joining, or filtering
switched off wakes a pass over that trunk alone (`trunks`) the moment netlink reports it.
Switching filtering on is journaled first (bridges.vlan_filtering_ours), so it goes off again
once no VLAN of ours needs it (app.supervisor.trunks.TrunkReleaser).

Then each VLAN row says what happened: active (observed_generation, observed_objects: the
kernel objects with name, ifindex and state) or error with the reason, a transient failure
backing off on that VLAN only; a deleted VLAN's row goes, with its name claims, once its
objects are gone. Events `vlan.<status>`, `vlan.deleted`, `vlan.drift_repaired`.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.bus import EventBus
from app.db.models import Vlan
from app.db.repositories import (
    FinishedOperation,
    LinkNameRepository,
    OperationRepository,
    VlanWork,
    desired_port_vlans,
    load_vlan_work,
    mark_filtering_ours,
    vlan_referrers,
    vlan_rows,
)
from app.db.session import Database, Session
from app.domain.links import ActionKind
from app.domain.retry import Backoff
from app.domain.status import Status
from app.domain.vlan_ports import BridgeVlans, plan_bridge
from app.domain.vlans import VlanBackend, VlanObjectKind
from app.host.netlink import LinkError
from app.host.vlans import FeatureMissing, VlanOps, memberships_of
from app.supervisor.faults import FaultLog, describe
from app.supervisor.links import TRANSIENT_ATTEMPTS_BEFORE_ERROR, Outcome, Scope
from app.supervisor.trunks import TrunkWatch
from app.supervisor.writeback import RefusalRecorder, write_each_on_refusal

log = logging.getLogger(__name__)

GONE = frozenset({ActionKind.DELETE, ActionKind.FORGET})


@dataclass
class TrunkResult:
    """What a filtering trunk's membership step did: its memberships afterwards, whether
    it had to change anything, and why it failed (None: it did not)."""

    memberships: Mapping[str, Mapping[int, Any]] = field(default_factory=dict)
    changed: bool = False
    error: str | None = None
    transient: bool = False
    # the error says no membership can exist: the kernel lacks filtering, or the trunk
    # bridge is gone (a deleted VLAN is then gone too)
    absent: bool = False


@dataclass
class VlanResult:
    ok: bool
    objects: list[dict[str, Any]]
    reason: str | None = None
    transient: bool = False
    repaired: bool = False
    # whether `objects` include the VLAN's links (the link pass looked at them); else they
    # hold the membership only, and the links keep what was last observed of them
    links_seen: bool = True


class VlanReconciler:
    """Owns a VlanOps socket, opened in the supervisor thread (its network namespace)."""

    def __init__(
        self,
        db: Database,
        bus: EventBus,
        ops: VlanOps,
        backoff: Backoff,
        watch: TrunkWatch | None = None,
    ) -> None:
        self.db = db
        self.watch = watch if watch is not None else TrunkWatch()
        self.bus = bus
        self.ops = ops
        self.backoff = backoff
        self.faults = FaultLog(log, backoff.clock)
        # the VLANs the last pass made usable again (error or pending before, or repaired):
        # the supervisor wakes the ports held off them at once (app.supervisor.loop)
        self.recovered: set[str] = set()
        # the database refused what a pass wrote for one VLAN: it says so and backs off
        self._write_refused = RefusalRecorder(db, bus, backoff, self.faults, _vlan_row)

    def run(
        self,
        scope: Scope,
        link_vlans: set[str],
        link_outcomes: Mapping[str, list[Outcome]],
        trunks: Collection[str] = (),
    ) -> int:
        """One pass over the VLANs this scope concerns: every one (FULL), the unsettled
        ones and due retries (DIRTY), or those whose links the link pass just looked at
        (`link_vlans`, with their outcomes) and those on the filtering `trunks` netlink
        reported drift on (NAMES). Returns how many rows it reported on."""
        self.recovered = set()
        if scope is Scope.NAMES and not link_vlans and not trunks:
            return 0
        retry = self.backoff.due_keys() if scope is Scope.DIRTY else []
        dirty = scope is not Scope.FULL
        trunk_results: dict[str, TrunkResult] = {}
        with self.db.reading() as session:
            work = load_vlan_work(session, dirty_only=dirty, ids=[*retry, *link_vlans])
            if trunks:
                loaded = {w.id for w in work}
                work += [
                    w
                    for w in load_vlan_work(session)
                    if w.trunk_id in trunks and w.id not in loaded
                ]
        pvids = self._filtering_trunks(scope, work, trunk_results, link_vlans, trunks)
        with self.db.reading() as session:
            desired = {tid: desired_port_vlans(session, tid, pvid) for tid, pvid in pvids.items()}
        results: dict[str, VlanResult] = {}
        trunk_results.update({tid: self._trunk(work, tid, desired[tid]) for tid in desired})
        for vlan in work:
            links = (
                _link_result(vlan, link_outcomes.get(vlan.id, []))
                if vlan.id in link_vlans
                else None
            )
            if vlan.backend is VlanBackend.BRIDGE_PER_VLAN:
                if links is not None:
                    results[vlan.id] = links
            elif links is None and vlan.gateway is not None and vlan.status == Status.ERROR:
                # its L3 interface failed and backs off: the pass that retries it reports (a
                # membership-only result here would flip the VLAN to active and back)
                continue
            elif vlan.trunk_id in trunk_results:
                membership = _membership_result(vlan, trunk_results[vlan.trunk_id])
                results[vlan.id] = membership if links is None else _both(membership, links)
        self.recovered = _usable_again(work, results)
        return self._write_back(scope, work, results)

    # ---- filtering trunks ------------------------------------------------------------------

    def _filtering_trunks(
        self,
        scope: Scope,
        work: Sequence[VlanWork],
        errors: dict[str, TrunkResult],
        link_vlans: Collection[str] = (),
        drifted: Collection[str] = (),
    ) -> dict[str, int]:
        """Trunk id -> its default PVID, for the filtering trunks of `work` (a NAMES pass
        looks only at the `drifted` ones and those of VLANs in `link_vlans`, whose L3
        interface the link pass just looked at), each with filtering switched on: recorded first
        (bridges.vlan_filtering_ours), so that it goes off again when the trunk's last
        filtering VLAN is gone (app.supervisor.trunks). A trunk that fails goes to
        `errors`."""
        trunks: dict[str, int] = {}
        for vlan in work:
            if vlan.backend is not VlanBackend.VLAN_FILTERING or vlan.trunk_id in trunks:
                continue
            if scope is Scope.NAMES and vlan.trunk_id not in drifted and vlan.id not in link_vlans:
                continue
            if vlan.trunk_id in errors:
                continue
            try:
                options = self.ops.bridge_vlan_options(vlan.trunk)
                if not options.filtering:
                    log.info("switching VLAN filtering on for trunk %s", vlan.trunk)
                    with self.db.unit_of_work() as session:
                        mark_filtering_ours(session, vlan.trunk_id, True)
                    options = self.ops.set_bridge_vlan_options(vlan.trunk, filtering=True)
                trunks[vlan.trunk_id] = options.default_pvid
            except LinkError as exc:
                errors[vlan.trunk_id] = _trunk_failed(exc)
        return trunks

    def _trunk(self, work: Sequence[VlanWork], trunk_id: str, desired: BridgeVlans) -> TrunkResult:
        trunk = next(w.trunk for w in work if w.trunk_id == trunk_id)
        self.watch.forget(trunk_id)  # until settled again: what happens now is ours
        try:
            index = self.ops.bridge_index(trunk)
            ports = self.ops.port_vlans(index, trunk)
            observed = memberships_of(ports)
            # only the trunk's ports now: a planned port that is not one (a stopped VM's NIC
            # tap, a tap not created or moved in yet) cannot be configured, and must not fail
            # the steps of every other port; the watch wakes the trunk once it joins
            present = {port: vids for port, vids in desired.items() if port in observed}
            steps = plan_bridge(trunk, present, observed)
            if steps:
                log.info("trunk %s: %s", trunk, "; ".join(s.describe() for s in steps))
                # the ports' indexes as just dumped: no read of each port per step
                indexes = {p.name: p.index for p in ports if p.name is not None}
                self.ops.apply(trunk, steps, indexes, index)
                observed = memberships_of(self.ops.port_vlans(index, trunk))
            self.watch.settled(index, trunk_id, trunk, desired, observed)
            return TrunkResult(observed, changed=bool(steps))
        except LinkError as exc:
            return _trunk_failed(exc)
        except Exception as exc:  # a bug or an unexpected answer: this trunk only
            self.faults.failed(trunk_id, f"VLAN membership of trunk {trunk}", exc)
            return TrunkResult(error=describe(exc), transient=True)

    # ---- writing back ----------------------------------------------------------------------

    def _write_back(
        self, scope: Scope, work: Sequence[VlanWork], results: Mapping[str, VlanResult]
    ) -> int:
        """Record every result in one transaction; when the database refuses it, each result
        alone, so that one VLAN's refusal stays on that VLAN (reason, backoff) and never fails
        the pass for every object, pass after pass (app.supervisor.writeback)."""
        return write_each_on_refusal(
            results,
            lambda some: self._write_results(scope, work, some),
            self._write_refused,
            self.backoff,
        )

    def _write_results(
        self, scope: Scope, work: Sequence[VlanWork], results: Mapping[str, VlanResult]
    ) -> int:
        events: list[dict[str, object]] = []
        finished: list[FinishedOperation] = []
        with self.db.unit_of_work() as session:
            rows = vlan_rows(session, list(results))
            loaded = {w.id: w for w in work}
            for vlan_id, result in results.items():
                row = rows.get(vlan_id)
                if row is None:
                    continue
                event = self._record(session, scope, row, loaded[vlan_id], result, finished)
                if event is not None:
                    events.append(event)
            OperationRepository(session).finish(finished)
        for event in events:
            self.bus.publish(**event)
        return len(events)

    def _record(
        self,
        session: Any,
        scope: Scope,
        row: Vlan,
        loaded: VlanWork,
        result: VlanResult,
        finished: list[FinishedOperation],
    ) -> dict[str, object] | None:
        if row.deleted and result.ok:
            referrers = vlan_referrers(session, row.id)
            if referrers:
                return self._wait_for(row, referrers)
            self.backoff.succeeded(row.id)
            finished.append(FinishedOperation(row.id, row.generation, "succeeded"))
            LinkNameRepository(session).release(row.id)
            session.delete(row)
            return row.event_fields(
                "vlan", "deleted", status="deleted", observed_generation=row.generation
            )
        before = (row.status, row.status_reason, row.observed_generation, row.observed_objects)
        if result.ok:
            self.backoff.succeeded(row.id)
            self.faults.succeeded(row.id, f"VLAN {row.name}")
            drift = (
                scope is not Scope.DIRTY
                and result.repaired
                and row.status == Status.ACTIVE.value
                and row.observed_generation == row.generation
            )
            current = row.generation == loaded.generation
            if current and (
                row.observed_generation != loaded.generation or row.status != Status.ACTIVE.value
            ):
                finished.append(FinishedOperation(row.id, loaded.generation, "succeeded"))
            row.observed_generation = loaded.generation
            row.observed_objects = _observed(row, loaded, result)
            row.status = (
                Status.DELETING.value
                if row.deleted
                else (Status.ACTIVE.value if current else Status.PENDING.value)
            )
            row.status_reason = None
            if drift:
                return row.event_fields(
                    "vlan",
                    "drift_repaired",
                    status_reason="the kernel had drifted from the desired state",
                    data={"objects": result.objects},
                )
        elif result.transient and self.backoff.attempts(row.id) < TRANSIENT_ATTEMPTS_BEFORE_ERROR:
            self.backoff.failed(row.id)
            row.status_reason = f"retrying with backoff: {result.reason}"
            row.observed_objects = _observed(row, loaded, result)
        else:
            self.backoff.succeeded(row.id)  # permanent: retried at the next full resync
            newly_failed = (
                row.observed_generation != loaded.generation or row.status != Status.ERROR.value
            )
            row.observed_generation = loaded.generation
            row.status = Status.DELETING.value if row.deleted else Status.ERROR.value
            row.status_reason = result.reason
            row.observed_objects = _observed(row, loaded, result)
            if row.generation == loaded.generation and not row.deleted and newly_failed:
                finished.append(
                    FinishedOperation(row.id, loaded.generation, "failed", result.reason)
                )
        after = (row.status, row.status_reason, row.observed_generation, row.observed_objects)
        if after[:3] != before[:3]:
            return row.event_fields("vlan", data={"objects": row.observed_objects})
        if after[3] != before[3]:
            return row.event_fields("vlan", "observed", data={"objects": row.observed_objects})
        return None

    def _wait_for(self, row: Vlan, referrers: Sequence[str]) -> dict[str, object] | None:
        """A deleted VLAN whose objects are gone keeps its row while rows on their way out
        (a live network, a deleted VM's NICs) still point at it, backing off, as a link
        row does (app.supervisor.links)."""
        self.backoff.failed(row.id)
        reason = f"its kernel objects are gone; waiting for {', '.join(referrers[:5])} to go"
        if row.status_reason == reason:
            return None
        row.status_reason = reason
        return row.event_fields("vlan")


def _observed(row: Vlan, loaded: VlanWork, result: VlanResult) -> list[dict[str, Any]]:
    """What to record of the VLAN's kernel objects: `result`'s, plus, when it comes from the
    membership step alone (a pass over a drifted trunk), what was last observed of the links
    the VLAN still owns (a filtering VLAN's `<bridge>.<vid>`), which that step never saw."""
    if result.links_seen or not isinstance(row.observed_objects, list):
        return result.objects
    links = {o.name for o in loaded.objects() if o.kind is not VlanObjectKind.BRIDGE_VLAN}
    kept = [
        o
        for o in row.observed_objects
        if isinstance(o, dict)
        and o.get("kind") != str(VlanObjectKind.BRIDGE_VLAN)
        and o.get("name") in links
    ]
    return [*result.objects, *kept]


def _usable_again(work: Sequence[VlanWork], results: Mapping[str, VlanResult]) -> set[str]:
    """The VLANs whose result makes them usable as their ports' segment again: they were not
    active (a filtering VLAN in error offers its ports no master at all:
    app.db.repositories.port_vlans.vlan_masters), or their objects had to be repaired (a
    per-VLAN bridge re-created has lost its ports)."""
    return {
        w.id
        for w in work
        if not w.deleted
        and (result := results.get(w.id)) is not None
        and result.ok
        and (w.status != Status.ACTIVE.value or result.repaired)
    }


def _vlan_row(session: Session, vlan_id: str) -> tuple[Vlan, str] | None:
    row = vlan_rows(session, [vlan_id]).get(vlan_id)
    return None if row is None else (row, "vlan")


def _trunk_failed(exc: LinkError) -> TrunkResult:
    absent = isinstance(exc, FeatureMissing) or exc.code == errno.ENODEV
    return TrunkResult(error=str(exc), transient=exc.transient, absent=absent)


def _link_result(vlan: VlanWork, outcomes: Sequence[Outcome]) -> VlanResult:
    """A bridge_per_vlan VLAN from its links' outcomes: every one must have succeeded."""
    objects = [
        {
            "kind": str(o.spec.kind),
            "name": o.spec.name,
            "ifindex": o.ifindex,
            "state": o.oper_state if o.ok else "error",
        }
        for o in outcomes
        if o.action not in GONE
    ]
    failed = [o for o in outcomes if not o.ok]
    if failed:
        reason = "; ".join(f"{o.spec.name}: {o.reason}" for o in failed)
        return VlanResult(False, objects, reason, all(o.transient for o in failed))
    if vlan.deleted and any(o.action not in GONE for o in outcomes):
        return VlanResult(False, objects, "its links are still there", transient=True)
    # FORGET: a link planned deleted that is not there (a filtering VLAN's L3 interface
    # without a network), nothing was done
    repaired = any(o.action not in (ActionKind.SETTLED, ActionKind.FORGET) for o in outcomes)
    return VlanResult(True, objects, repaired=repaired)


def _both(membership: VlanResult, links: VlanResult) -> VlanResult:
    """A vlan_filtering VLAN's result from its trunk's membership step and the outcome of
    its L3 interface `<bridge>.<vid>` (the link pass): a failure of either is the VLAN's."""
    failed = [r for r in (membership, links) if not r.ok]
    return VlanResult(
        ok=not failed,
        objects=[*membership.objects, *links.objects],
        reason="; ".join(r.reason or "failed" for r in failed) or None,
        transient=bool(failed) and all(r.transient for r in failed),
        repaired=membership.repaired or links.repaired,
        links_seen=True,
    )


def _membership_result(vlan: VlanWork, trunk: TrunkResult) -> VlanResult:
    """A vlan_filtering VLAN from its trunk's membership step: the VID tagged on the uplink
    port (once the trunk has one as its port)."""
    if trunk.error is not None:
        if vlan.deleted and trunk.absent:
            return VlanResult(True, [])
        return VlanResult(False, [], trunk.error, trunk.transient, links_seen=False)
    objects: list[dict[str, Any]] = []
    for obj in vlan.objects():
        if obj.kind is not VlanObjectKind.BRIDGE_VLAN:
            continue
        present = vlan.vid in trunk.memberships.get(obj.name, {})
        objects.append(
            {
                "kind": str(obj.kind),
                "name": obj.name,
                "parent": obj.parent,
                "vid": vlan.vid,
                "ifindex": None,
                "state": "present" if present else "absent",
            }
        )
    return VlanResult(
        True, [] if vlan.deleted else objects, repaired=trunk.changed, links_seen=False
    )
