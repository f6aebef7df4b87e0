"""One reconcile pass over bridges, taps and the links VLANs own (their outcomes are
recorded on the VLAN rows by app.supervisor.vlans): load desired state, observe the kernel, plan,
apply, write observed state back in one transaction, then publish events.

Scopes: `dirty` (rows the API changed), `names` (links netlink told us about) and `full`
(everything, including the orphan sweep, which is only sound with the whole desired set).
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from app.bus import EventBus
from app.db.models import Bridge, Tap
from app.db.repositories import (
    FinishedOperation,
    LinkNameRepository,
    ObservedState,
    OperationRepository,
    journal_create_intents,
    link_referrers,
    link_rows,
    load_link_specs,
    mirror_tap,
)
from app.db.session import Database, Session
from app.domain.links import (
    Action,
    ActionKind,
    Fingerprint,
    LinkKind,
    LinkSpec,
    ObservedLink,
    changes_for_new_link,
    fingerprint,
    order_actions,
    plan,
    plan_link,
)
from app.domain.retry import Backoff
from app.domain.status import Status
from app.host.netlink import LinkError, LinkOps
from app.supervisor.faults import FaultLog, describe
from app.supervisor.writeback import RefusalRecorder, write_each_on_refusal

log = logging.getLogger(__name__)

OPERATION_RETENTION = dt.timedelta(days=1)
DUMP_THRESHOLD = 256  # above this many links to look at, one dump beats per-link gets
TRANSIENT_ATTEMPTS_BEFORE_ERROR = 5


class Scope(enum.Enum):
    DIRTY = "dirty"
    NAMES = "names"
    FULL = "full"


@dataclass
class Outcome:
    """What happened to one resource in this pass."""

    spec: LinkSpec
    action: ActionKind
    ok: bool
    reason: str | None = None
    transient: bool = False
    ifindex: int | None = None
    mac: str | None = None
    mtu: int | None = None
    oper_state: str | None = None
    isolated: bool | None = None  # a bridge port's isolation flag as read back
    create_failed: bool = False  # our create call failed: whatever holds the name is not ours


class LinkReconciler:
    """Runs passes; owns nothing but a netlink socket (LinkOps) from the supervisor thread."""

    def __init__(self, db: Database, bus: EventBus, ops: LinkOps, backoff: Backoff) -> None:
        self.db = db
        self.bus = bus
        self.ops = ops
        self.backoff = backoff
        # name -> the link as last settled, and index -> name; the supervisor compares
        # notifications to them to spot changes made behind our back
        self.expected: dict[str, Fingerprint] = {}
        self.names_by_index: dict[int, str] = {}
        self._finished: list[FinishedOperation] = []  # collected during one write-back
        self._gone_ports: list[dict[str, object]] = []  # events of ports gone with their taps
        # the last pass's outcomes for links VLANs own (VLAN id -> outcomes) and the VLANs
        # it loaded: app.supervisor.vlans records them on the VLAN rows
        self.vlan_outcomes: dict[str, list[Outcome]] = {}
        self.vlan_ids: set[str] = set()
        # the bridges the last pass made usable again (usable_again): the supervisor wakes
        # the ports held off them at once (app.supervisor.loop)
        self.recovered: set[str] = set()
        self.faults = FaultLog(log, backoff.clock)
        # the database refused what a pass wrote for one row: it says so and backs off
        self._write_refused = RefusalRecorder(db, bus, backoff, self.faults, _link_row)

    def run(self, scope: Scope, names: Iterable[str] = ()) -> int:
        """One pass; returns how many resources it changed or reported on."""
        retry_ids = self.backoff.due_keys() if scope is Scope.DIRTY else []
        self.vlan_outcomes, self.vlan_ids, self.recovered = {}, set(), set()
        with self.db.reading() as session:
            loaded = load_link_specs(
                session,
                dirty_only=scope is Scope.DIRTY,
                names=list(names) if scope is Scope.NAMES else None,
                also_ids=retry_ids,
            )
        states = loaded.states
        for gone in set(retry_ids) - states.keys():
            self.backoff.succeeded(gone)
        reported = self._report_unreadable(loaded.unreadable, states)
        specs = [s for s in loaded.specs if self.backoff.due(s.id) or scope is Scope.FULL]
        self.vlan_ids = {s.id for s in specs if s.id in loaded.vlan_ids}
        if not specs and scope is not Scope.FULL:
            return reported
        if scope is Scope.FULL:
            self._prune_operations()
        actions = self._plan(scope, specs, keep_ids=loaded.unreadable.keys())
        self._journal_create_intents(actions)
        outcomes = [self._execute(action) for action in actions]
        for outcome in outcomes:
            if outcome is not None and outcome.spec.id in loaded.vlan_ids:
                self.vlan_outcomes.setdefault(outcome.spec.id, []).append(outcome)
        links = [o for o in outcomes if o is not None and o.spec.id not in loaded.vlan_ids]
        self.recovered = usable_again(links, states)
        return reported + self._write_back(scope, links, states)

    # ---- planning --------------------------------------------------------------------------

    def _plan(self, scope: Scope, specs: list[LinkSpec], keep_ids: Iterable[str]) -> list[Action]:
        if scope is Scope.FULL or len(specs) > DUMP_THRESHOLD:
            actions = plan(specs, self.ops.dump(), keep_ids)
            if scope is not Scope.FULL:  # the sweep needs the whole desired set
                actions = [a for a in actions if a.kind is not ActionKind.SWEEP]
            return actions
        masters: dict[int, str] = {}
        for bridge in {s.master for s in specs if s.master}:
            index = self.ops.index_of(bridge)
            if index is not None:
                masters[index] = bridge
        addresses = self.ops.addresses_by_index()
        actions = [plan_link(spec, self.ops.get(spec.name, addresses), masters) for spec in specs]
        # links outside this pass are not known here: a missing one is the host's to report
        return order_actions(actions)

    def _prune_operations(self) -> None:
        cutoff = dt.datetime.now(dt.UTC) - OPERATION_RETENTION
        with self.db.unit_of_work() as session:
            pruned = OperationRepository(session).prune(cutoff)
        if pruned:
            log.info("forgot %d operations that ended before %s", pruned, cutoff.isoformat())

    def _journal_create_intents(self, actions: list[Action]) -> None:
        """Commit 'about to create' before creating, so a crash in between is adoptable."""
        ids = [
            a.spec.id
            for a in actions
            if a.spec is not None
            and a.kind in (ActionKind.CREATE, ActionKind.RECREATE)
            and not a.spec.create_intent
        ]
        if not ids:
            return
        with self.db.unit_of_work() as session:
            journal_create_intents(session, ids)

    # ---- applying --------------------------------------------------------------------------

    def _execute(self, action: Action) -> Outcome | None:
        spec = action.spec
        try:
            if action.kind is ActionKind.SWEEP:
                assert action.observed is not None
                self._sweep(action.observed)
                return None
            assert spec is not None
            if action.kind in (ActionKind.CONFLICT, ActionKind.BLOCKED):
                if action.kind is ActionKind.CONFLICT and action.observed is not None:
                    self._watch_holder(spec.name, action.observed)
                return Outcome(spec, action.kind, ok=False, reason=action.reason)
            if action.kind in (ActionKind.DELETE, ActionKind.FORGET):
                return self._remove(spec, action)
            if action.kind in (ActionKind.CREATE, ActionKind.RECREATE):
                return self._create(spec, action)
            return self._update(spec, action)
        except LinkError as exc:
            if spec is None:
                log.warning("could not remove orphan %s: %s", action.name, exc)
                return None
            return Outcome(spec, action.kind, ok=False, reason=str(exc), transient=exc.transient)
        except Exception as exc:  # a bug or a kernel answer we did not expect: this link only
            self.faults.failed(action.name, f"{action.kind.value} of link {action.name}", exc)
            if spec is None:
                return None
            return Outcome(spec, action.kind, ok=False, reason=describe(exc), transient=True)

    def _sweep(self, link: ObservedLink) -> None:
        log.info("removing orphan link %s (index %d, %s)", link.name, link.index, link.alias)
        self.ops.delete(link.index, link.name)
        self._forget(link.name, link.index)

    def _remove(self, spec: LinkSpec, action: Action) -> Outcome:
        if action.kind is ActionKind.DELETE and action.observed is not None:
            self.ops.delete(action.observed.index, action.observed.name)
            self._forget(spec.name, action.observed.index)
        self.expected.pop(spec.name, None)
        return Outcome(spec, action.kind, ok=True)

    def _create(self, spec: LinkSpec, action: Action) -> Outcome:
        if action.kind is ActionKind.RECREATE:
            assert action.observed is not None
            log.info("re-creating %s: %s", spec.name, action.reason)
            self.ops.delete(action.observed.index, action.observed.name)
        try:
            index = self.ops.create(spec)
        except LinkError as exc:
            return Outcome(
                spec,
                action.kind,
                ok=False,
                reason=str(exc),
                transient=exc.transient,
                create_failed=True,
            )
        # the mark goes with the first configuration call; the create-intent journal covers
        # a crash (or a failed call) until the link carries it
        self.ops.apply(index, spec.name, changes_for_new_link(spec), spec.kind)
        return self._settled(spec, action.kind, self.ops.get(spec.name, {}))

    def _update(self, spec: LinkSpec, action: Action) -> Outcome:
        link = action.observed
        assert link is not None
        if action.kind is ActionKind.SETTLED:
            return self._settled(spec, action.kind, link)
        self.ops.apply(link.index, spec.name, action.changes, spec.kind)
        # re-read the link itself (index, MAC, master, MTU); addresses are not recorded
        return self._settled(spec, action.kind, self.ops.get(spec.name, {}))

    def _watch_holder(self, name: str, holder: ObservedLink) -> None:
        """The foreign link that holds our link's name is watched like ours (the monitor
        decodes its notifications): its removal, or any change to it, wakes a pass over our
        link at once instead of at the next full pass. It is never touched; a pass that
        finds it still there changes nothing, so this cannot loop."""
        self.names_by_index[holder.index] = name
        self.expected.setdefault(name, fingerprint(holder))

    def _forget(self, name: str, index: int) -> None:
        self.expected.pop(name, None)
        self.names_by_index.pop(index, None)

    def _settled(self, spec: LinkSpec, kind: ActionKind, link: ObservedLink | None) -> Outcome:
        if link is None:
            return Outcome(spec, kind, ok=False, reason=f"{spec.name} vanished", transient=True)
        self.expected[spec.name] = fingerprint(link)
        self.names_by_index[link.index] = spec.name
        return Outcome(
            spec,
            kind,
            ok=True,
            ifindex=link.index,
            mac=link.mac,
            mtu=link.mtu,
            oper_state=link.oper_state,
            isolated=link.port_isolated,
        )

    # ---- writing back ----------------------------------------------------------------------

    def _report_unreadable(
        self, unreadable: dict[str, str], states: dict[str, ObservedState]
    ) -> int:
        """Rows whose stored settings cannot be used: each says why on itself (error, settled
        at its generation, its operation failed), once per change; its link is left as it
        is until a PATCH (a new generation) or a delete makes the row usable again."""
        news = {
            row_id: reason
            for row_id, reason in unreadable.items()
            if (states[row_id].status, states[row_id].reason, states[row_id].observed_generation)
            != (Status.ERROR.value, reason, states[row_id].generation)
        }
        if not news:
            return 0
        events: list[dict[str, object]] = []
        with self.db.unit_of_work() as session:
            rows = link_rows(session, list(news))
            finished = []
            for row_id, reason in news.items():
                row = rows.get(row_id)
                if row is None or row.generation != states[row_id].generation:
                    continue  # changed meanwhile: the next pass reads it again
                log.warning("%s %s: %s", type(row).__name__.lower(), row.name, reason)
                self.backoff.succeeded(row.id)
                row.status, row.status_reason = Status.ERROR.value, reason
                row.observed_generation = row.generation
                finished.append(FinishedOperation(row.id, row.generation, "failed", reason))
                kind = "bridge" if isinstance(row, Bridge) else "tap"
                events.append(row.event_fields(kind))
            OperationRepository(session).finish(finished)
        for event in events:
            self.bus.publish(**event)
        return len(events)

    def _write_back(
        self, scope: Scope, outcomes: Sequence[Outcome | None], states: dict[str, ObservedState]
    ) -> int:
        """Record what changed in one transaction (a quiet pass writes nothing), then publish;
        when the database refuses that transaction, each row alone, so that the refusal stays
        on its row (reason, backoff) and every other row's status lands
        (app.supervisor.writeback, as the VLAN pass does)."""
        changed: dict[str, list[Outcome]] = {}
        for o in outcomes:
            if o is not None and not _nothing_new(o, states[o.spec.id]):
                changed.setdefault(o.spec.id, []).append(o)
        return write_each_on_refusal(
            changed,
            lambda some: self._write_outcomes(scope, some, states),
            self._write_refused,
            self.backoff,
        )

    def _write_outcomes(
        self, scope: Scope, changed: Mapping[str, list[Outcome]], states: dict[str, ObservedState]
    ) -> int:
        """One transaction over these rows' outcomes; events go out once it committed."""
        events: list[dict[str, object]] = []
        self._finished = []
        self._gone_ports = []
        with self.db.unit_of_work() as session:
            rows = link_rows(session, list(changed))
            for row_id, row_outcomes in changed.items():
                row = rows.get(row_id)
                if row is None:  # deleted meanwhile by another pass: nothing to record
                    continue
                for outcome in row_outcomes:
                    event = self._record(session, scope, row, outcome, states[row_id].generation)
                    if event is not None:
                        events.append(event)
                        if isinstance(row, Tap) and event.get("status") != "deleted":
                            events += self._mirror_port(session, row, event)
            events += self._gone_ports
            OperationRepository(session).finish(self._finished)
        for event in events:
            self.bus.publish(**event)
        return len(events)

    def _record(
        self,
        session: Session,
        scope: Scope,
        row: Bridge | Tap,
        outcome: Outcome,
        loaded_generation: int,
    ) -> dict[str, object] | None:
        """Write one outcome onto its row; return the event to publish, if anything changed."""
        if outcome.ok and outcome.action in (ActionKind.DELETE, ActionKind.FORGET):
            return self._record_gone(session, row, outcome.spec)
        before = (row.status, row.status_reason, row.observed_generation)
        observed_before = _observed(row)
        if outcome.create_failed:
            row.create_intent = False
        if outcome.ok:
            drift_event = self._record_success(scope, row, outcome, loaded_generation)
            if drift_event is not None:
                return drift_event
        else:
            self._record_failure(row, outcome, loaded_generation)
        if (row.status, row.status_reason, row.observed_generation) != before:
            return row.event_fields(str(outcome.spec.kind), data=_observed(row))
        if _observed(row) != observed_before:
            # the kernel changed what we only observe (a MAC or MTU set by hand, a port
            # coming up): said at once, not at the next full pass
            return row.event_fields(str(outcome.spec.kind), "observed", data=_observed(row))
        return None

    def _mirror_port(
        self, session: Session, tap: Tap, tap_event: dict[str, object]
    ) -> list[dict[str, object]]:
        """A port's tap changed (`tap_event`): the port's row follows (mirror_tap), and its
        own event goes out; a port that settled finishes its operations."""
        gone = tap_event.get("status") == "deleted"
        mirrored = mirror_tap(session, tap, gone)
        if mirrored is None:
            return []
        port, settled = mirrored
        if settled:
            result = "failed" if port.status == "error" else "succeeded"
            self._finished.append(
                FinishedOperation(port.id, port.generation, result, port.status_reason)
            )
        if gone:
            return [port.event_fields("port", "deleted", status="deleted")]
        what = "observed" if tap_event.get("type") == "tap.observed" else None
        return [port.event_fields("port", what, data={"tap": tap.ifname})]

    def _record_gone(
        self, session: Session, row: Bridge | Tap, spec: LinkSpec
    ) -> dict[str, object] | None:
        if not row.deleted:  # undeleted meanwhile: impossible today, but never lose it
            return None
        referrers = link_referrers(session, row)
        if referrers:
            # the services let only rows on their way out (a deleted VM's NICs) outlive a
            # delete; the row waits for them (backing off) instead of failing the whole
            # write-back on a foreign key, pass after pass
            self.backoff.failed(spec.id)
            reason = f"the link is gone; waiting for {', '.join(referrers[:5])} to go"
            if row.status_reason == reason:
                return None
            row.status_reason = reason
            return row.event_fields(str(spec.kind))
        self.backoff.succeeded(spec.id)
        self._finished.append(FinishedOperation(spec.id, row.generation, "succeeded"))
        LinkNameRepository(session).release(spec.id)
        if isinstance(row, Tap):  # its port goes first (the foreign key)
            self._gone_ports += self._mirror_port(session, row, {"status": "deleted"})
        session.delete(row)  # the unit of work's delete, as Repository.remove does
        return row.event_fields(
            str(spec.kind), "deleted", status="deleted", observed_generation=row.generation
        )

    def _record_success(
        self, scope: Scope, row: Bridge | Tap, outcome: Outcome, loaded: int
    ) -> dict[str, object] | None:
        """Returns a drift_repaired event when a settled resource had to be fixed."""
        self.backoff.succeeded(row.id)
        self.faults.succeeded(row.ifname, f"link {row.ifname}")  # keyed as action.name
        drift = (
            scope is not Scope.DIRTY
            and row.status == Status.ACTIVE.value
            and row.observed_generation == row.generation
            and outcome.action is not ActionKind.SETTLED
        )
        current = row.generation == loaded
        newly_applied = row.observed_generation != loaded or row.status != Status.ACTIVE.value
        row.create_intent = False
        row.observed_ifindex = outcome.ifindex
        row.observed_mac = outcome.mac
        row.observed_mtu = outcome.mtu
        row.observed_oper_state = outcome.oper_state
        if isinstance(row, Tap):
            row.observed_isolated = outcome.isolated
        row.observed_generation = loaded
        held = None if row.deleted else outcome.spec.held
        if row.deleted:
            row.status = Status.DELETING.value
        elif held is not None:  # made, but kept off the bridge its row names: its failure
            row.status, row.status_reason = Status.ERROR.value, held
        else:
            row.status = Status.ACTIVE.value if current else Status.PENDING.value
            row.status_reason = None
        if current and newly_applied:
            result = "succeeded" if held is None else "failed"
            self._finished.append(FinishedOperation(row.id, loaded, result, held))
        if not drift:
            return None
        reason = f"{outcome.action.value}: the kernel had drifted from the desired state"
        return row.event_fields(
            str(outcome.spec.kind), "drift_repaired", status_reason=reason, data=_observed(row)
        )

    def _record_failure(self, row: Bridge | Tap, outcome: Outcome, loaded: int) -> None:
        if outcome.transient and self.backoff.attempts(row.id) < TRANSIENT_ATTEMPTS_BEFORE_ERROR:
            self.backoff.failed(row.id)
            # the same words at every retry: the row changes (and an event goes out) once
            row.status_reason = f"retrying with backoff: {outcome.reason}"
            return
        self.backoff.succeeded(row.id)  # permanent: retried at the next full resync
        newly_failed = row.observed_generation != loaded or row.status != Status.ERROR.value
        row.observed_generation = loaded
        row.status = Status.DELETING.value if row.deleted else Status.ERROR.value
        row.status_reason = outcome.reason
        if row.generation == loaded and not row.deleted and newly_failed:
            self._finished.append(FinishedOperation(row.id, loaded, "failed", outcome.reason))


def usable_again(outcomes: Sequence[Outcome], states: Mapping[str, ObservedState]) -> set[str]:
    """The bridges this pass made usable as masters again: those it set up or re-created,
    and those whose row did not say `active` without a reason (in error, pending, backing
    off). Their ports may have been held off them, blocked or failed meanwhile."""
    return {
        o.spec.id
        for o in outcomes
        if o.ok
        and o.spec.kind is LinkKind.BRIDGE
        and not o.spec.deleted
        and (
            o.action in (ActionKind.CREATE, ActionKind.RECREATE, ActionKind.ADOPT)
            or states[o.spec.id].status != Status.ACTIVE.value
            or states[o.spec.id].reason is not None
        )
    }


def _link_row(session: Session, row_id: str) -> tuple[Bridge | Tap, str] | None:
    row = link_rows(session, [row_id]).get(row_id)
    if row is None:
        return None
    return row, "bridge" if isinstance(row, Bridge) else "tap"


def _nothing_new(outcome: Outcome, state: ObservedState) -> bool:
    """A settled link whose row already says exactly this needs no write."""
    return (
        outcome.ok
        and outcome.action is ActionKind.SETTLED
        and state.status == Status.ACTIVE.value
        and state.observed_generation == state.generation
        and (state.ifindex, state.mac, state.mtu, state.oper_state, state.isolated)
        == (outcome.ifindex, outcome.mac, outcome.mtu, outcome.oper_state, outcome.isolated)
    )


def _observed(row: Bridge | Tap) -> dict[str, object]:
    """The row's observed link fields, as events carry them in `data` (a tap's also its
    bridge port's isolation flag)."""
    observed: dict[str, object] = {
        "ifindex": row.observed_ifindex,
        "mac": row.observed_mac,
        "mtu": row.observed_mtu,
        "oper_state": row.observed_oper_state,
    }
    if isinstance(row, Tap):
        observed["isolated"] = row.observed_isolated
    return observed
