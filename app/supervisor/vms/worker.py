"""The VM worker's loop and passes: control from other threads (start, stop, nudge, QMP
execute), the serial passes that ask app.domain.vm_plan.decide what to do, and the one
task per VM under a per-VM lock that carries an action out."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import threading
from collections.abc import Awaitable, Sequence
from functools import partial

from app.db.models import Vm, VmNic
from app.db.repositories import (
    BridgeFacts,
    LinkNameRepository,
    VmRepository,
    bridge_facts,
    uplink_moves,
)
from app.domain.vm_plan import VmAction, decide
from app.domain.vms import PowerState, VmStatus
from app.host.qemu import reap_detached
from app.supervisor.faults import describe
from app.supervisor.vm_taps import TapPlan, VmTaps, tap_plans
from app.supervisor.vms.adoption import Adoption
from app.supervisor.vms.launch import Launcher
from app.supervisor.vms.shutdown import Stopper
from app.supervisor.vms.state import (
    PASS_KEY,
    QMP_TIMEOUT,
    STOP_TIMEOUT,
    Report,
    VmState,
    _desired,
    _note_stale_taps,
    _note_vfs,
    log,
)
from app.supervisor.vms.write_back import WriteBack

CHANGING_NICS = "plugging or unplugging NICs (hotplug)"


class VmWorker(Adoption, Launcher, Stopper, WriteBack):
    """The VM worker: its thread and loop, and the serial passes that decide and act."""

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

    def recheck_taps(self, vm_ids: set[str]) -> None:
        """Thread-safe: the bridge or VLAN these VMs have a NIC on became usable again (the
        link supervisor says so): their running qemus' taps are checked at the next pass,
        which comes now, not `resync_interval` after the last check."""
        loop = self._loop
        if loop is None:
            return  # not started yet: the first pass checks every running VM's taps
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._recheck_taps, set(vm_ids))

    def _recheck_taps(self, vm_ids: set[str]) -> None:
        for vm_id in vm_ids:
            state = self._vms.get(vm_id)
            if state is not None:
                state.taps_checked_at = -math.inf
        self._set_wake()

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

    def _request_stop(self) -> None:
        self._stopping = True
        self._set_wake()

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
            _note_vfs(state, nics)
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
            if state.syncing_nics and (row.deleted or row.power_state != PowerState.RUNNING):
                # a stop or delete does not wait for a guest to release an unplugged NIC
                state.task.cancel()
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
        changes = self._nic_changes(state, row, nics) if state.running else None
        # a PATCH of a NIC's rate limits is applied by a check of the taps at once, and
        # the VM settles when it is done
        limits_due = state.limits_generation != row.generation
        if not state.running:
            self._clean_taps_if_needed(state, decision.status, decision.reason, now)
        elif changes is not None:
            sync = self._sync_nics(state, row, nics, taps, changes)
            busy = "; ".join(r for r in (CHANGING_NICS, state.tap_problems) if r)
            self._spawn(state, decision.status, busy, sync)
            state.syncing_nics = True
            return self._report(row, state, decision.status, busy, False), None
        elif taps and (limits_due or now - state.taps_checked_at >= self.resync_interval):
            state.taps_checked_at = now
            state.limits_generation = row.generation
            check = self._check_taps(state, held_taps(state, nics, taps))
            self._spawn(state, decision.status, decision.reason or state.tap_problems, check)
            if limits_due:
                reason = decision.reason or state.tap_problems
                return self._report(row, state, decision.status, reason, False), None
        problems = (state.tap_problems, state.nic_problem) if state.running else ()
        reason = decision.reason or "; ".join(p for p in problems if p) or None
        due = state.nic_retry_at if state.running else None  # a hotplug to try again
        return self._report(row, state, decision.status, reason, True), due

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
        if state.task is task:  # a pass may have spawned the next one before this ran
            state.busy = state.busy_reason = None
            state.syncing_nics = False
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
        """A VM that does not run keeps no taps and no VFs bound to vfio-pci (left by a
        crash, a failed launch, or a daemon that died)."""
        leftover = state.taps or state.vfs
        if leftover and not state.running and (state.retry_at is None or now >= state.retry_at):
            self._spawn(state, status, reason, self._drop_taps(state))


def held_taps(state: VmState, nics: Sequence[VmNic], taps: list[TapPlan]) -> list[TapPlan]:
    """The taps of the NICs whose devices the running qemu holds (all while that is not
    known): a NIC that waits to be plugged (no free q35 root port, or stored while qemu was
    starting) has no tap yet, which is no tap deleted by hand."""
    if state.plugged is None:
        return taps
    # a hub join (model null) has no device: it came with the launch (none is hot-plugged)
    held = {n.tap_name for n in nics if n.model is None or n.position in state.plugged}
    return [plan for plan in taps if plan.name in held]
