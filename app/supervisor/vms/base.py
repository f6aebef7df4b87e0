"""The VM worker's shared core: its settings and state, the process table entry of a VM,
and the backoff of a VM whose host calls failed."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

from app.bus import EventBus
from app.db.models import Vm
from app.db.session import Database
from app.domain.retry import Backoff
from app.domain.vm_plan import RestartRules
from app.domain.vms import VmStatus
from app.host.qemu import DEFAULT_DEADLINES, ShutdownDeadlines
from app.supervisor.faults import FaultLog
from app.supervisor.vm_taps import VmTaps
from app.supervisor.vms.state import (
    DEFAULT_QEMU_USER,
    DEFAULT_RULES,
    ERROR_RETRY,
    RESYNC_INTERVAL,
    RETRY_BASE,
    RETRY_MAX,
    Report,
    VmState,
    log,
)


class WorkerBase:
    """What every part of the worker shares: its settings, the process table and the retry
    bookkeeping of one VM."""

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

    def vm_dir(self, vm_id: str) -> Path:
        return self.run_dir / "vms" / vm_id

    def _vm_taps(self) -> VmTaps:
        assert self._taps is not None, "the worker's loop is not running"
        return self._taps

    def _set_wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

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

    def _retry_later(self, state: VmState, reason: str) -> None:
        """A host call failed in a way worth retrying: back off (passes hold the VM)."""
        delay = min(RETRY_MAX, RETRY_BASE * 2**state.retry_attempts)
        state.retry_attempts += 1
        state.retry_at = self.clock() + delay
        state.retry_reason = f"retrying in {delay:.1f} s: {reason}"

    def _retry_done(self, state: VmState) -> None:
        state.retry_at, state.retry_reason, state.retry_attempts = None, None, 0
