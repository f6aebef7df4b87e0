"""The VM worker: starts, watches, re-adopts and stops the qemu of every VM in the database.

One thread runs one asyncio loop. Serial passes (woken by nudges, qemu exits, due restarts
and a resync timer) read every VM, ask the pure decision (app.domain.vm_plan.decide) what to
do, start the actions as tasks and write the observed state back in one transaction, then
publish events. Actions (launch, the shutdown ladder, removal) run as one task per VM under a
per-VM lock, so a VM is never acted on twice at once and a hung qemu delays only itself; every
await on qemu, QMP or netlink has a deadline. Tasks change only the in-memory process table
and nudge; the database is written by passes alone.

Taps of `bridge` NICs are made, opened and removed by app.supervisor.vm_taps, on a thread of
its own in the managed namespace.

qemu outlives the daemon: start() first re-adopts every qemu found in a VM's run directory
(identity checked by app.host.qemu.adopt), so a restarted daemon never starts a second copy;
stop() releases the handles and leaves qemu running.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import logging
import os
import pwd
import shutil
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from app.bus import EventBus
from app.db.models import Vm, VmNic
from app.db.repositories import (
    BridgeFacts,
    FinishedOperation,
    LinkNameRepository,
    OperationRepository,
    VmRepository,
    bridge_facts,
    uplink_moves,
    vm_spec,
)
from app.db.session import Database, Session
from app.domain.errors import DomainError
from app.domain.qemu_argv import qemu_argv
from app.domain.retry import Backoff
from app.domain.vm_plan import RestartRules, VmAction, VmDesired, VmObserved, decide
from app.domain.vms import (
    PowerState,
    RestartPolicy,
    VmStatus,
    resolve_accelerator,
)
from app.host.errors import HostError
from app.host.netlink import LinkError
from app.host.procs import proc_facts
from app.host.qemu import (
    DEFAULT_DEADLINES,
    LaunchRecord,
    LaunchSpec,
    QemuError,
    QemuExit,
    QemuLaunchError,
    QemuProcess,
    QemuUnresponsive,
    ShutdownDeadlines,
    adopt_from,
    find_running,
    launch,
    reap_detached,
    shutdown,
)
from app.host.qmp import QmpEvent
from app.supervisor.faults import FaultLog, describe, is_transient
from app.supervisor.vm_taps import TapPlan, VmTaps, tap_plans

log = logging.getLogger(__name__)

T = TypeVar("T")

LAUNCH_TIMEOUT = 15.0  # spawn until QMP answers
STOP_KILL = "kill"
KILL_DEADLINES = ShutdownDeadlines(powerdown=0, quit=0, sigterm=0, sigkill=5.0)
ADOPT_TIMEOUT = 5.0  # QMP greeting of a qemu found at start-up
QMP_TIMEOUT = 5.0  # one QMP command asked for through execute()
RESYNC_INTERVAL = 30.0  # a pass even when nothing wakes us
ERROR_RETRY = 1.0  # the first retry after a pass failed unexpectedly (then it doubles)
PASS_KEY = "pass"  # the backoff key of whole-pass failures
STOP_TIMEOUT = 10.0  # stop(): for in-flight actions to be cancelled and handles released
RETRY_BASE, RETRY_MAX = 0.5, 30.0  # transient failures before a launch (a bridge not there yet)
QMP_EVENTS = frozenset({"SHUTDOWN", "RESET", "STOP", "RESUME", "NIC_RX_FILTER_CHANGED"})
DEFAULT_RULES = RestartRules()
DEFAULT_QEMU_USER = "kvmnetd-qemu"  # settings.qemu_user
SETTLED_OK = frozenset({VmStatus.RUNNING, VmStatus.STOPPED})


@dataclass
class VmState:
    """What the worker knows about one VM's qemu (the in-memory process table)."""

    vm_id: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    task: asyncio.Task[None] | None = None
    busy: VmStatus | None = None  # the status while `task` runs
    busy_reason: str | None = None
    process: QemuProcess | None = None
    accelerator: str | None = None
    started_at: dt.datetime | None = None
    exit_code: int | None = None  # shown; None when unknown (adopted) or never ran
    exit_at: float | None = None  # the last exit the decision still has to account for
    output: str | None = None  # tail of qemu's own output at the last exit / launch failure
    stopped_by_us: bool = False
    restart_times: list[float] = field(default_factory=list)
    new_restarts: int = 0  # policy restarts not yet added to the row
    # (intent generation, reason): stays in error until the next power intent (a PATCH,
    # even during the launch that failed, is none)
    held: tuple[int, str] | None = None
    stuck: str | None = None  # qemu survived the ladder (or runs unheld): no more actions
    retry_at: float | None = None  # a transient launch failure: try again then
    retry_reason: str | None = None
    retry_attempts: int = 0
    taps: set[str] = field(default_factory=set)  # bridge taps that may exist in the kernel
    removed: bool = False  # everything on the host is gone: the pass deletes the rows
    generation: int = 0  # the desired generation last seen
    intent_generation: int = 0  # the last power intent seen (a PATCH is none)
    launched_generation: int | None = None  # the generation the running qemu started from
    user: tuple[int, int] | None = None  # real uid/gid of the running qemu (/proc)
    event_fields: dict[str, Any] = field(default_factory=dict)  # for QMP events
    taps_checked_at: float = 0.0  # when the running qemu's bridge taps were last checked
    tap_problem: str | None = None  # a tap of the running qemu was deleted by hand
    # taps of NICs a forced delete removed from the VM (their names stay claimed): dropped
    # once, when qemu no longer holds them
    stale_taps_seen: set[str] = field(default_factory=set)
    # (generation, what was wrong with the run directory's files at adoption)
    note: tuple[int, str] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None

    def observed(self) -> VmObserved:
        return VmObserved(
            running=self.running,
            last_exit_code=self.exit_code,
            last_exit_at=self.exit_at,
            stopped_by_us=self.stopped_by_us,
            recent_restarts=tuple(self.restart_times),
        )


@dataclass(frozen=True)
class Report:
    """The observed columns a pass wants one row to show."""

    status: VmStatus
    reason: str | None
    settled: bool  # the loaded generation is applied (or failed for good)
    pid: int | None
    accelerator_used: str | None
    started_at: dt.datetime | None
    exit_code: int | None
    last_output: str | None
    restarts: int
    launched_generation: int | None
    user: tuple[int, int] | None


class VmWorker:
    def __init__(
        self,
        db: Database,
        bus: EventBus,
        run_dir: Path,
        qemu_binary: str,
        kvm_runs_guests: Callable[[], bool | None],
        vhost_net: Callable[[], bool],
        netns: str | None = None,
        qemu_user: str | None = DEFAULT_QEMU_USER,
        clock: Callable[[], float] = time.monotonic,
        rules: RestartRules = DEFAULT_RULES,
        deadlines: ShutdownDeadlines = DEFAULT_DEADLINES,
        resync_interval: float = RESYNC_INTERVAL,
    ) -> None:
        self.db = db
        self.bus = bus
        self.run_dir = run_dir
        self.qemu_binary = qemu_binary
        self.kvm_runs_guests = kvm_runs_guests
        self.vhost_net = vhost_net
        self.netns = netns
        self.qemu_user = qemu_user
        self.clock = clock
        self.rules = rules
        self.deadlines = deadlines
        self.resync_interval = resync_interval
        self.ready = threading.Event()
        self.passes = 0
        self._vms: dict[str, VmState] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._taps: VmTaps | None = None
        self.faults = FaultLog(log, clock)
        self._faulted: dict[str, Report] = {}  # VM id -> its report while it fails
        self._pass_backoff = Backoff(clock, base=ERROR_RETRY, cap=resync_interval)

    # ---- control ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vm-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = STOP_TIMEOUT + 5) -> None:
        """Stop the worker; qemu processes keep running."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(self._request_stop)
        if self._thread is not None:
            self._thread.join(timeout)

    def nudge(self) -> None:
        """Thread-safe: desired state changed, run a pass soon."""
        loop = self._loop
        if loop is None:
            return  # not started yet: the first pass reads everything anyway
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._set_wake)

    def execute(
        self,
        vm_id: str,
        command: str,
        args: dict[str, object] | None = None,
        timeout: float = QMP_TIMEOUT,
    ) -> object:
        """Thread-safe: run one QMP command on a VM's qemu (system_reset for a reboot,
        set_link, ...) and return its answer, within `timeout` seconds. LookupError when the
        worker holds no running qemu of that VM; app.host.qmp.QmpError when QMP fails."""
        loop = self._loop
        if loop is None:
            raise LookupError("the VM worker is not running")
        future = asyncio.run_coroutine_threadsafe(
            self._execute(vm_id, command, args, timeout), loop
        )
        try:
            return future.result(timeout + 1)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(
                f"QMP {command} for VM {vm_id}: no answer in {timeout:g} s"
            ) from None

    async def _execute(
        self, vm_id: str, command: str, args: dict[str, object] | None, timeout: float
    ) -> object:
        state = self._vms.get(vm_id)
        process = state.process if state is not None else None
        if process is None:
            raise LookupError(f"VM {vm_id} has no running qemu")
        return await process.qmp.execute(command, args, timeout=timeout)

    def _vm_taps(self) -> VmTaps:
        assert self._taps is not None, "the worker's loop is not running"
        return self._taps

    def vm_dir(self, vm_id: str) -> Path:
        return self.run_dir / "vms" / vm_id

    def _set_wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _request_stop(self) -> None:
        self._stopping = True
        self._set_wake()

    # ---- the loop --------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception:
            log.exception("the VM worker ended unexpectedly")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._taps = VmTaps(self.netns)
        try:
            try:
                await self._adopt_all()
            except Exception:  # launch() still refuses a second copy of a running VM
                log.exception("start-up adoption failed")
            next_at = self._pass_safely()
            self.ready.set()
            while not self._stopping:
                timeout = max(0.0, min(next_at, self.clock() + self.resync_interval) - self.clock())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
                if self._stopping:
                    break
                self._wake.clear()
                next_at = self._pass_safely()
        finally:
            await self._shutdown_worker()

    def _pass_safely(self) -> float:
        try:
            wake_at = self._pass()
        except Exception as exc:  # retried after a backoff that grows while this persists
            self.faults.failed(PASS_KEY, "the VM pass", exc)
            return self.clock() + self._pass_backoff.failed(PASS_KEY)
        else:
            self._pass_backoff.succeeded(PASS_KEY)
            self.faults.succeeded(PASS_KEY, "the VM pass")
            return wake_at
        finally:
            self.passes += 1

    async def _shutdown_worker(self) -> None:
        """Cancel in-flight actions, release every qemu handle (qemu keeps running)."""
        tasks = [s.task for s in self._vms.values() if s.task is not None and not s.task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_TIMEOUT)
        for state in self._vms.values():
            if state.process is not None:
                process, state.process = state.process, None
                with contextlib.suppress(Exception):
                    await process.close()
        if self._taps is not None:
            self._taps.close()

    # ---- start-up adoption -----------------------------------------------------------------

    async def _adopt_all(self) -> None:
        """Every VM with a run directory: take over its qemu if one still runs."""
        with self.db.reading() as session:
            rows = list(VmRepository(session).all())
        found = [row for row in rows if self.vm_dir(row.id).is_dir()]
        await asyncio.gather(*(self._adopt_one(row) for row in found))

    async def _adopt_one(self, row: Vm) -> None:
        state = self._state(row)
        try:
            found = await adopt_from(
                self.vm_dir(row.id), row.id, ADOPT_TIMEOUT, partial(self._on_qmp_event, state)
            )
            process, problem = found.process, found.problem
        except QemuUnresponsive as exc:
            # alive and ours but QMP is silent: hold it (never start a second copy); the
            # ladder can still end it with signals
            log.warning("adopted VM %s without QMP: %s", row.id, exc)
            process = exc.process
            problem = "; ".join(p for p in (exc.problem, f"QMP does not answer: {exc}") if p)
        except Exception:
            log.exception("could not adopt the qemu of VM %s", row.id)
            return
        if problem is not None:  # shown on the VM until its next change
            state.note = (row.generation, problem)
        if process is None:
            return
        record = LaunchRecord.read(process.paths)
        state.started_at = (
            dt.datetime.fromtimestamp(record.launched_at, dt.UTC) if record else row.started_at
        )
        state.accelerator = _argv_option(process.argv, "-accel") or row.accelerator_used
        state.exit_at, state.stopped_by_us, state.held = None, False, None
        state.launched_generation = row.launched_generation
        self._hold(state, process)

    def _hold(self, state: VmState, process: QemuProcess) -> None:
        state.process = process
        facts = proc_facts(process.pid)  # who it really is, not who we asked for
        state.user = (facts.uid, facts.gid) if facts is not None else None
        process.watch().add_done_callback(partial(self._on_exit_future, state, process))

    # ---- exits and QMP events --------------------------------------------------------------

    def _on_exit_future(
        self, state: VmState, process: QemuProcess, future: asyncio.Future[QemuExit]
    ) -> None:
        if future.cancelled():  # the handle was released (worker stopping)
            return
        self._record_exit(state, process, future.result())

    def _record_exit(self, state: VmState, process: QemuProcess, exit: QemuExit) -> None:
        if state.process is not process:
            return  # already recorded
        state.process = None
        state.exit_code = exit.returncode
        state.exit_at = self.clock()
        state.output = exit.output_tail or None
        log.info("VM %s: qemu pid %d ended (%s)", state.vm_id, exit.pid, exit.reason)
        self._set_wake()

    def _on_qmp_event(self, state: VmState, event: QmpEvent) -> None:
        if event.name not in QMP_EVENTS or not state.event_fields:
            return
        fields = dict(state.event_fields)
        fields["type"] = f"vm.qmp.{event.name}"
        fields["data"] = dict(event.data) if event.data else None
        self.bus.publish(**fields)

    # ---- one pass --------------------------------------------------------------------------

    def _state(self, row: Vm) -> VmState:
        """The VM's entry in the process table; a VM seen for the first time (after a daemon
        restart) takes what its row says about the last run, so that a crashed VM with policy
        `never` stays crashed and a launch that failed at this generation stays failed."""
        state = self._vms.get(row.id)
        if state is not None:
            return state
        state = VmState(row.id, generation=row.generation)
        state.intent_generation = row.intent_generation
        state.exit_code, state.output = row.exit_code, row.last_output
        state.accelerator, state.started_at = row.accelerator_used, row.started_at
        applied = row.observed_generation == row.generation
        status = row.status
        if applied and status == VmStatus.ERROR.value:
            state.held = (row.intent_generation, row.status_reason or "failed")
        elif applied and status not in (VmStatus.PENDING.value, VmStatus.STOPPED.value):
            state.exit_at = self.clock()  # it ran; if it is not adopted, it ended meanwhile
        elif applied and status == VmStatus.STOPPED.value and row.power_state == "running":
            state.exit_at = self.clock()  # ended cleanly; the policy said no restart
            state.exit_code = 0 if row.exit_code is None else row.exit_code
        self._vms[row.id] = state
        return state

    def _pass(self) -> float:
        """Decide and act for every VM; write what changed; returns when to wake next."""
        reap_detached()
        now = self.clock()
        wake_at = now + self.resync_interval
        with self.db.reading() as session:
            vms = VmRepository(session)
            rows = list(vms.all())
            nics_by_vm: dict[str, list[VmNic]] = {}
            for nic in vms.all_nics():
                nics_by_vm.setdefault(nic.vm_id, []).append(nic)
            bridges = bridge_facts(session, uplink_moves(session))
            claimed: dict[str, set[str]] = {}
            for name, vm_id in LinkNameRepository(session).held_by("vm"):
                claimed.setdefault(vm_id, set()).add(name)
        reports: dict[str, Report] = {}
        for row in rows:
            state = self._state(row)
            nics = nics_by_vm.get(row.id, [])
            _note_stale_taps(state, claimed.get(row.id, set()), nics)
            report, due = self._decide_and_act_safely(row, nics, bridges, state, now)
            reports[row.id] = report
            if due is not None:
                wake_at = min(wake_at, due)
        for gone in set(self._vms) - {row.id for row in rows}:
            state = self._vms[gone]
            if state.process is None and (state.task is None or state.task.done()):
                del self._vms[gone]  # removed (by us) and forgotten
        self._write_back(rows, reports)
        return wake_at

    def _decide_and_act_safely(
        self,
        row: Vm,
        nics: list[VmNic],
        bridges: dict[str, BridgeFacts],
        state: VmState,
        now: float,
    ) -> tuple[Report, float | None]:
        """One VM; something unexpected is recorded on it (error, the reason) and retried
        with backoff, and the pass goes on with the other VMs."""
        faulted = self._faulted.get(row.id)
        waiting = state.retry_at is not None and now < state.retry_at
        if faulted is not None and row.generation == state.generation and waiting:
            return faulted, state.retry_at
        try:
            result = self._decide_and_act(row, nics, bridges, state, now)
        except Exception as exc:
            return self._fault(row, state, exc), state.retry_at
        if self._faulted.pop(row.id, None) is not None:
            self._retry_done(state)
        self.faults.succeeded(row.id, f"VM {row.name}")
        return result

    def _fault(self, row: Vm, state: VmState, exc: BaseException) -> Report:
        self.faults.failed(row.id, f"VM {row.name}", exc)
        self._retry_later(state, describe(exc))
        # the same words at every retry: the row changes (and an event goes out) once
        state.retry_reason = f"retrying with backoff: {describe(exc)}"
        report = self._report(row, state, VmStatus.ERROR, state.retry_reason, False)
        self._faulted[row.id] = report
        return report

    def _decide_and_act(
        self,
        row: Vm,
        nics: list[VmNic],
        bridges: dict[str, BridgeFacts],
        state: VmState,
        now: float,
    ) -> tuple[Report, float | None]:
        if row.generation != state.generation:
            self._new_generation(state, row.generation, row.intent_generation)
        if state.task is not None and not state.task.done():
            assert state.busy is not None
            self._escalate(row, state)
            return self._report(row, state, state.busy, state.busy_reason, False), None
        if row.deleted and state.removed:
            return self._report(row, state, VmStatus.DELETING, None, True), None
        desired = _desired(row)
        taps = tap_plans(row, nics, bridges, self._owner(row))
        if state.stuck is not None:  # a qemu that survived SIGKILL: nothing more to try
            status = VmStatus.DELETING if row.deleted else VmStatus.ERROR
            return self._report(row, state, status, state.stuck, True), None
        if (
            state.held is not None
            and state.held[0] == row.intent_generation
            and not row.deleted
            and desired.power_state is PowerState.RUNNING
            and not state.running
        ):
            self._clean_taps_if_needed(state, VmStatus.ERROR, state.held[1], now)
            return self._report(row, state, VmStatus.ERROR, state.held[1], True), None
        decision = decide(desired, state.observed(), now, self.rules)
        action = decision.action
        if (
            state.retry_at is not None
            and now < state.retry_at
            and (action in (VmAction.LAUNCH, VmAction.REMOVE) or not state.running)
        ):
            # a host call failed (a bridge not there yet, netlink busy): not before retry_at
            return self._report(row, state, decision.status, state.retry_reason, False), (
                state.retry_at
            )
        if action is VmAction.LAUNCH:
            if state.exit_at is not None and not state.stopped_by_us:
                state.restart_times.append(now)  # a policy restart
                state.new_restarts += 1
            self._spawn(
                state, VmStatus.STARTING, decision.reason, self._launch(state, row, nics, taps)
            )
            return self._report(row, state, VmStatus.STARTING, decision.reason, False), None
        if action is VmAction.STOP:
            stop = self._stop(state, row.name, taps, self._deadlines_for(row))
            self._spawn(state, VmStatus.STOPPING, None, stop)
            return self._report(row, state, VmStatus.STOPPING, None, False), None
        if action is VmAction.REMOVE:
            remove = self._remove(state, taps, self._deadlines_for(row))
            self._spawn(state, VmStatus.DELETING, None, remove)
            return self._report(row, state, VmStatus.DELETING, None, False), None
        if action is VmAction.WAIT:
            self._clean_taps_if_needed(state, decision.status, decision.reason, now)
            return self._report(row, state, decision.status, decision.reason, False), (
                decision.not_before
            )
        if not state.running:
            self._clean_taps_if_needed(state, decision.status, decision.reason, now)
        elif taps and now - state.taps_checked_at >= self.resync_interval:
            state.taps_checked_at = now
            check = self._check_taps(state, taps)
            self._spawn(state, decision.status, decision.reason or state.tap_problem, check)
        reason = decision.reason or (state.tap_problem if state.running else None)
        return self._report(row, state, decision.status, reason, True), None

    def _escalate(self, row: Vm, state: VmState) -> None:
        """A kill (or a forced delete) while a graceful ladder climbs: SIGKILL now rather
        than after the ladder's deadlines (the action table: kill while stopping)."""
        process = state.process
        if (
            row.stop_mode == STOP_KILL
            and state.busy in (VmStatus.STOPPING, VmStatus.DELETING)
            and process is not None
            and not process.exited()
        ):
            log.info("VM %s: escalating the stop to SIGKILL", state.vm_id)
            with contextlib.suppress(OSError):  # the ladder released the handle meanwhile
                process.send_signal(signal.SIGKILL)

    def _new_generation(self, state: VmState, generation: int, intent: int) -> None:
        """The user changed the VM. A new power intent (start, stop, kill, delete: the
        action table's `desire`) means a past exit, crash loop, failed launch or retry no
        longer stands in the way of what they now want (a `start` of a crashed VM starts
        it). A PATCH is no intent: a crashed or failed VM stays so, at the new generation."""
        state.generation = generation
        if intent == state.intent_generation:
            return
        state.intent_generation = intent
        if not state.running:
            state.exit_at = None
            state.stopped_by_us = False
            state.restart_times.clear()
        state.held = state.stuck = None
        state.retry_at, state.retry_reason, state.retry_attempts = None, None, 0

    def _report(
        self, row: Vm, state: VmState, status: VmStatus, reason: str | None, settled: bool
    ) -> Report:
        process = state.process
        if state.note is not None and state.note[0] == row.generation:
            reason = f"{reason}; {state.note[1]}" if reason else state.note[1]
        return Report(
            status=status,
            reason=reason,
            settled=settled,
            pid=process.pid if process is not None else None,
            accelerator_used=state.accelerator,
            started_at=state.started_at,
            exit_code=state.exit_code,
            last_output=state.output,
            restarts=row.restarts + state.new_restarts,
            launched_generation=state.launched_generation,
            user=state.user if process is not None else None,
        )

    def _spawn(
        self, state: VmState, status: VmStatus, reason: str | None, action: Awaitable[None]
    ) -> None:
        state.busy, state.busy_reason = status, reason

        async def run() -> None:
            async with state.lock:
                await action

        state.task = asyncio.create_task(run(), name=f"vm-{status.value}-{state.vm_id[:8]}")
        state.task.add_done_callback(partial(self._action_done, state))

    def _action_done(self, state: VmState, task: asyncio.Task[None]) -> None:
        state.busy = state.busy_reason = None
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            # retried with backoff (launch and remove wait for retry_at), logged at a
            # bounded rate: a failure that repeats never becomes a hot loop
            self.faults.failed(state.vm_id, f"an action on VM {state.vm_id}", exc)
            self._retry_later(state, describe(exc))
            state.retry_reason = f"retrying with backoff: {describe(exc)}"
        self._set_wake()

    def _clean_taps_if_needed(
        self, state: VmState, status: VmStatus, reason: str | None, now: float
    ) -> None:
        """A VM that does not run keeps no taps (left by a crash, a failed launch, or a
        daemon that died)."""
        if state.taps and not state.running and (state.retry_at is None or now >= state.retry_at):
            self._spawn(state, status, reason, self._drop_taps(state))

    def _retry_later(self, state: VmState, reason: str) -> None:
        """A host call failed in a way worth retrying: back off (passes hold the VM)."""
        delay = min(RETRY_MAX, RETRY_BASE * 2**state.retry_attempts)
        state.retry_attempts += 1
        state.retry_at = self.clock() + delay
        state.retry_reason = f"retrying in {delay:.1f} s: {reason}"

    def _retry_done(self, state: VmState) -> None:
        state.retry_at, state.retry_reason, state.retry_attempts = None, None, 0

    # ---- writing back ----------------------------------------------------------------------

    def _write_back(self, rows: Sequence[Vm], reports: dict[str, Report]) -> None:
        """One transaction for everything that changed, then the events."""
        changed = [row for row in rows if _differs(row, reports[row.id], self._vms[row.id])]
        events: list[dict[str, Any]] = []
        finished: list[FinishedOperation] = []
        written: list[tuple[VmState, int]] = []
        if changed:
            with self.db.unit_of_work() as session:
                for loaded in changed:
                    row = VmRepository(session).get(loaded.id)
                    if row is None:
                        continue
                    state = self._vms[row.id]
                    if row.deleted and state.removed:
                        events.append(self._delete_rows(session, row, finished))
                        continue
                    report = reports[row.id]
                    event = _record(row, report, loaded.generation, finished)
                    written.append((state, state.new_restarts))
                    if event is not None:
                        events.append(event)
                OperationRepository(session).finish(finished)
            for state, restarts in written:
                state.new_restarts -= restarts
        for row in rows:  # what QMP events carry
            state = self._vms[row.id]
            report = reports[row.id]
            state.event_fields = row.event_fields(
                "vm", status=report.status.value, status_reason=report.reason
            )
        for event in events:
            self.bus.publish(**event)

    def _delete_rows(
        self, session: Session, row: Vm, finished: list[FinishedOperation]
    ) -> dict[str, Any]:
        VmRepository(session).forget(row.id)
        finished.append(FinishedOperation(row.id, row.generation, "succeeded"))
        log.info("VM %s (%s) removed", row.name, row.id)
        return row.event_fields(
            "vm",
            "deleted",
            status="deleted",
            status_reason=None,
            observed_generation=row.generation,
        )

    # ---- actions (tasks, one at a time per VM) ---------------------------------------------

    async def _launch(
        self, state: VmState, row: Vm, nics: list[VmNic], taps: list[TapPlan]
    ) -> None:
        generation, intent = row.generation, row.intent_generation
        state.tap_problem = None
        state.taps_checked_at = self.clock()
        try:
            vm = vm_spec(row, nics)
            accelerator = resolve_accelerator(vm.accelerator, self.kvm_runs_guests())
            missing = [tap.name for tap in taps if tap.bridge is None]
            if missing:
                raise DomainError(f"the bridge of tap(s) {', '.join(missing)} is gone")
            user = self._run_as(row)
        except (DomainError, ValueError) as exc:
            state.held = (intent, str(exc))
            return
        if taps:
            state.taps.update(tap.name for tap in taps)
            try:
                await self._vm_taps().ensure(row.id, taps)
            except (HostError, TimeoutError) as exc:
                reason = f"creating taps: {exc or 'timed out'}"
                if is_transient(exc):
                    self._retry_later(state, reason)
                else:
                    state.held = (intent, reason)
                return
        tap_fds: dict[str, list[int]] = {}
        try:
            # qemu gets the taps as open descriptors (as libvirt does): it needs no access
            # to /dev/net/tun, and an unprivileged qemu works wherever the daemon does
            if any(nic.tap_name for nic in nics):
                tap_fds = await self._vm_taps().open(nics)
        except (LinkError, TimeoutError) as exc:
            self._retry_later(state, f"opening taps: {exc or 'timed out'}")
            return
        try:
            spec = LaunchSpec(
                vm_id=row.id,
                argv=qemu_argv(vm, self.qemu_binary, accelerator, self.vhost_net(), tap_fds),
                run_dir=self.vm_dir(row.id),
                user=None if user is None else user[0],
                group=None if user is None else user[1],
                netns=self.netns,
                sandbox=True,
                name=row.name,
                pass_fds=tuple(fd for fds in tap_fds.values() for fd in fds),
            )
            process = await launch(spec, LAUNCH_TIMEOUT, partial(self._on_qmp_event, state))
        except ValueError as exc:
            state.held = (intent, str(exc))
            return
        except QemuLaunchError as exc:
            state.held = (intent, str(exc).rpartition("\nargv: ")[0] or str(exc))
            state.exit_code, state.output = exc.exit_code, exc.output or None
            return
        finally:
            for fds in tap_fds.values():
                for fd in fds:
                    os.close(fd)
        self._retry_done(state)
        state.accelerator = accelerator.value
        state.started_at = dt.datetime.now(dt.UTC)
        state.exit_code, state.exit_at, state.output = None, None, None
        state.stopped_by_us = False
        state.launched_generation = generation
        self._hold(state, process)
        log.info(
            "VM %s (%s) runs as pid %d (uid %s) under %s",
            row.name,
            row.id,
            process.pid,
            state.user[0] if state.user else "?",
            accelerator,
        )

    def _run_as(self, row: Vm) -> tuple[int, int] | None:
        """The uid/gid the VM's qemu runs as: its run_as, else the daemon's qemu user
        (None: qemu_user is unset, it runs as the daemon). A missing user is an error on
        the VM, never a silent fallback to root."""
        if row.run_as_uid is not None:
            gid = row.run_as_uid if row.run_as_gid is None else row.run_as_gid
            return row.run_as_uid, gid
        if self.qemu_user is None:
            return None
        try:
            entry = pwd.getpwnam(self.qemu_user)
        except KeyError:
            raise DomainError(
                f"the qemu user {self.qemu_user!r} does not exist: create it with `useradd "
                f"--system --no-create-home --shell /usr/sbin/nologin {self.qemu_user}` "
                "(make run and deploy/install.sh do) and start the VM again, or give it run_as"
            ) from None
        return entry.pw_uid, entry.pw_gid

    def _owner(self, row: Vm) -> tuple[int, int] | None:
        """The owner of the VM's bridge taps: the user its qemu runs as, when known."""
        try:
            return self._run_as(row)
        except DomainError:
            return None

    async def _check_taps(self, state: VmState, taps: list[TapPlan]) -> None:
        """A running VM's bridge taps: one taken off its bridge (brctl delif) is put back;
        one deleted by hand cannot be (qemu holds the deleted device), which is reported."""
        repaired, lost = await self._vm_taps().verify(state.vm_id, taps)
        for name in repaired:
            log.warning("VM %s: tap %s was off its bridge; attached again", state.vm_id, name)
            self._publish(state, "drift_repaired", f"tap {name} was off its bridge: attached again")
        if lost and state.tap_problem is None:
            state.tap_problem = (
                f"tap(s) {', '.join(lost)} deleted by hand: the guest is cut off from its "
                "bridge until the VM is stopped and started (qemu holds the deleted device)"
            )
            log.warning("VM %s: %s", state.vm_id, state.tap_problem)
            self._publish(state, "tap_lost", state.tap_problem)
            self._set_wake()  # the next pass shows it on the row

    def _publish(self, state: VmState, what: str, reason: str) -> None:
        if state.event_fields:
            fields = dict(state.event_fields)
            fields.update(type=f"vm.{what}", status_reason=reason)
            self.bus.publish(**fields)

    def _deadlines_for(self, row: Vm) -> ShutdownDeadlines:
        """A kill (or a forced delete) skips the guest's power-down and qemu's quit."""
        return KILL_DEADLINES if row.stop_mode == STOP_KILL else self.deadlines

    async def _end(self, state: VmState, name: str, deadlines: ShutdownDeadlines) -> bool:
        """The shutdown ladder for a running qemu; its exit is recorded. False when qemu
        survived it (then the VM is `stuck` until the user changes it)."""
        process = state.process
        if process is None:
            return True
        state.stopped_by_us = True
        try:
            step = await shutdown(process, deadlines=deadlines)
            log.info("VM %s (%s) ended by %s", name, state.vm_id, step)
        except QemuError as exc:  # survived SIGKILL: stuck in the kernel
            log.error("VM %s: %s", state.vm_id, exc)
            state.stuck = str(exc)
        if process.exit is not None:
            self._record_exit(state, process, process.exit)
            return True
        if state.process is process:
            state.process = None  # the handle was released by shutdown()
        return False

    async def _stop(
        self, state: VmState, name: str, taps: list[TapPlan], deadlines: ShutdownDeadlines
    ) -> None:
        await self._end(state, name, deadlines)
        await self._drop_taps(state, [tap.name for tap in taps])

    async def _remove(
        self, state: VmState, taps: list[TapPlan], deadlines: ShutdownDeadlines
    ) -> None:
        if not await self._end(state, state.vm_id, deadlines):
            return
        running = find_running(state.vm_id)
        if running:  # a qemu of this VM the worker does not hold: never orphan it
            state.stuck = f"a qemu of this VM still runs as pid {running[0]}; not removing"
            return
        await self._drop_taps(state, [tap.name for tap in taps])
        if state.taps:
            return  # netlink failed: retried after a backoff
        await asyncio.to_thread(shutil.rmtree, self.vm_dir(state.vm_id), True)
        state.removed = True

    async def _drop_taps(self, state: VmState, names: Sequence[str] = ()) -> None:
        wanted = sorted(state.taps.union(names))
        if not wanted:
            return
        try:
            await self._vm_taps().remove(state.vm_id, wanted)
        except (LinkError, TimeoutError) as exc:
            log.warning("VM %s: could not remove taps %s: %s", state.vm_id, wanted, exc)
            self._retry_later(state, f"removing taps: {exc or 'timed out'}")
            return
        state.taps.difference_update(wanted)
        if state.retry_at is not None and not state.running:
            self._retry_done(state)


# ---- helpers --------------------------------------------------------------------------------


def _note_stale_taps(state: VmState, claimed: set[str], nics: Sequence[VmNic]) -> None:
    """Tap names the VM still claims but no NIC uses (a forced delete removed the NIC): the
    taps may exist (made at launch, perhaps by an earlier daemon); they go with the next stop
    or clean-up. Each name is noted once, so a tap that is already gone costs one lookup."""
    stale = claimed - {nic.tap_name for nic in nics if nic.tap_name} - state.stale_taps_seen
    if stale:
        state.stale_taps_seen |= stale
        state.taps |= stale


def _desired(row: Vm) -> VmDesired:
    """What the user wants. A VM being deleted goes whatever else its row says (even a
    power state or policy this version cannot read)."""
    if row.deleted:
        return VmDesired(PowerState.STOPPED, RestartPolicy.NEVER, True)
    return VmDesired(PowerState(row.power_state), RestartPolicy(row.restart_policy), False)


def _argv_option(argv: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(argv[:-1]):
        if arg == name:
            return argv[i + 1]
    return None


def _user_of(row: Vm) -> tuple[int, int] | None:
    if row.observed_uid is None or row.observed_gid is None:
        return None
    return row.observed_uid, row.observed_gid


def _differs(row: Vm, report: Report, state: VmState) -> bool:
    if row.deleted and state.removed:
        return True
    return (
        (row.status, row.status_reason) != (report.status.value, report.reason)
        or (row.pid, row.accelerator_used, row.started_at)
        != (report.pid, report.accelerator_used, report.started_at)
        or (row.exit_code, row.last_output, row.restarts)
        != (report.exit_code, report.last_output, report.restarts)
        or (row.launched_generation, _user_of(row)) != (report.launched_generation, report.user)
        or (report.settled and row.observed_generation != row.generation)
    )


def _record(
    row: Vm, report: Report, loaded_generation: int, finished: list[FinishedOperation]
) -> dict[str, Any] | None:
    """Write a report onto its row; the event to publish when the status changed."""
    before = (row.status, row.status_reason, row.observed_generation)
    row.status = report.status.value
    row.status_reason = report.reason
    row.pid = report.pid
    row.accelerator_used = report.accelerator_used
    row.started_at = report.started_at
    row.exit_code = report.exit_code
    row.last_output = report.last_output
    row.restarts = report.restarts
    row.launched_generation = report.launched_generation
    row.observed_uid, row.observed_gid = report.user if report.user else (None, None)
    # a newer generation arrived while we decided: it is not applied yet
    newly_applied = row.observed_generation != loaded_generation
    if report.settled and row.generation == loaded_generation and newly_applied:
        row.observed_generation = loaded_generation
        # a PATCH (no power intent) succeeded once stored and seen, whatever the VM's status
        patched = row.intent_generation < loaded_generation
        if report.status in SETTLED_OK or patched:
            finished.append(FinishedOperation(row.id, loaded_generation, "succeeded"))
        else:
            reason = report.reason or report.status.value
            finished.append(FinishedOperation(row.id, loaded_generation, "failed", reason))
    if (row.status, row.status_reason, row.observed_generation) == before:
        return None
    return row.event_fields("vm")
