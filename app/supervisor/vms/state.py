"""The VM worker's process table (one VmState per VM), the report a pass writes back,
its constants, and the pure helpers the pass reads rows with."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from app.db.models import Vm, VmNic
from app.domain.nics import HostLink, find_driver
from app.domain.nics.spec import VfSpec
from app.domain.nics.sriov import stored_vf
from app.domain.vm_plan import RestartRules, VmDesired, VmObserved
from app.domain.vms import PowerState, RestartPolicy, VmStatus
from app.host.qemu import QemuProcess, ShutdownDeadlines

# one logger for the whole worker, whichever module of it writes
log = logging.getLogger("app.supervisor.vms")

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
QMP_EVENTS = frozenset(
    {"SHUTDOWN", "RESET", "STOP", "RESUME", "NIC_RX_FILTER_CHANGED", "DEVICE_DELETED"}
)
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
    # SR-IOV VFs (by PCI address) that may be bound to vfio-pci for this VM: released (their
    # own driver, free settings) once qemu does not run
    vfs: dict[str, VfSpec] = field(default_factory=dict)
    vfs_noted: bool = False  # the stored NICs' VFs were added to `vfs` once (_note_vfs)
    removed: bool = False  # everything on the host is gone: the pass deletes the rows
    generation: int = 0  # the desired generation last seen
    intent_generation: int = 0  # the last power intent seen (a PATCH is none)
    launched_generation: int | None = None  # the generation the running qemu started from
    user: tuple[int, int] | None = None  # real uid/gid of the running qemu (/proc)
    event_fields: dict[str, Any] = field(default_factory=dict)  # for QMP events
    taps_checked_at: float = 0.0  # when the running qemu's bridge taps were last checked
    tap_problem: str | None = None  # a tap of the running qemu was deleted by hand
    limit_problem: str | None = None  # the kernel refused a tap's rate limits (tc)
    limits_generation: int | None = None  # the generation whose rate limits were applied

    @property
    def tap_problems(self) -> str | None:
        """What is wrong with the running qemu's taps (None: nothing)."""
        found = [p for p in (self.tap_problem, self.limit_problem) if p]
        return "; ".join(found) if found else None

    # taps of NICs a forced delete removed from the VM (their names stay claimed): dropped
    # once, when qemu no longer holds them
    stale_taps_seen: set[str] = field(default_factory=set)
    # (generation, what was wrong with the run directory's files at adoption)
    note: tuple[int, str] | None = None
    # NIC hotplug (app.supervisor.vms.hotplug): the indexes of the guest NIC devices the
    # running qemu holds (None: not known), the bridge taps deleted by hand that wait to be
    # re-plugged, the NICs that wait for a free q35 root port (tried again once a NIC was
    # unplugged, else at the next start), why the last change failed or waits, and not
    # before when to try again
    plugged: set[int] | None = None
    lost_taps: set[str] = field(default_factory=set)
    waiting_for_port: set[int] = field(default_factory=set)
    nic_problem: str | None = None
    nic_retry_at: float | None = None
    syncing_nics: bool = False  # `task` is a hotplug (cancelled by a stop or delete)

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


def _note_stale_taps(state: VmState, claimed: set[str], nics: Sequence[VmNic]) -> None:
    """Tap names the VM still claims but no NIC uses (a forced delete removed the NIC): the
    taps may exist (made at launch, perhaps by an earlier daemon); they go with the next stop
    or clean-up. Each name is noted once, so a tap that is already gone costs one lookup."""
    stale = claimed - {nic.tap_name for nic in nics if nic.tap_name} - state.stale_taps_seen
    if stale:
        state.stale_taps_seen |= stale
        state.taps |= stale


def _note_vfs(state: VmState, nics: Sequence[VmNic]) -> None:
    """The SR-IOV VFs of the VM's NICs, noted the first time the worker sees the VM: an
    earlier daemon may have left them bound to vfio-pci for a qemu that has since ended;
    they are released at the next clean-up while qemu does not run (a no-op for a VF that
    is free already)."""
    if state.vfs_noted:
        return
    state.vfs_noted = True
    for nic in nics:
        driver = find_driver(nic.backend)
        if driver is None or driver.host_link is not HostLink.VF:
            continue
        with contextlib.suppress(KeyError, TypeError, ValueError):  # a damaged row: skipped
            vf = stored_vf(nic.options or {})
            state.vfs[vf.pci_address] = vf


def _desired(row: Vm) -> VmDesired:
    """What the user wants. A VM being deleted goes whatever else its row says (even a
    power state or policy this version cannot read)."""
    if row.deleted:
        return VmDesired(PowerState.STOPPED, RestartPolicy.NEVER, True)
    return VmDesired(PowerState(row.power_state), RestartPolicy(row.restart_policy), False)


def started_at(launched_at: float | None) -> dt.datetime | None:
    """A VM's `started_at`: when its qemu was spawned, from the launch record (Unix time, s),
    so a launch and a later re-adoption of the same process report the same instant."""
    return None if launched_at is None else dt.datetime.fromtimestamp(launched_at, dt.UTC)


def _argv_option(argv: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(argv[:-1]):
        if arg == name:
            return argv[i + 1]
    return None


def _user_of(row: Vm) -> tuple[int, int] | None:
    if row.observed_uid is None or row.observed_gid is None:
        return None
    return row.observed_uid, row.observed_gid
