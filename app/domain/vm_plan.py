"""What the VM worker should do next for one VM: a pure decision from desired and observed
state, including the restart policy (never / on-failure / always) with exponential backoff
and a crash-loop limit. An explicit stop is never undone by the policy.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from app.domain.vms import PowerState, RestartPolicy, VmStatus


class VmAction(enum.StrEnum):
    NOTHING = "nothing"
    LAUNCH = "launch"  # start qemu (first start, start after stop, or a policy restart)
    WAIT = "wait"  # a policy restart is due later (backoff)
    STOP = "stop"  # the shutdown ladder: powerdown, quit, SIGTERM, SIGKILL
    REMOVE = "remove"  # deleted: stop if running, then remove everything of it


@dataclass(frozen=True)
class RestartRules:
    base_delay: float = 1.0
    max_delay: float = 60.0
    crash_loop_limit: int = 5  # restarts within `crash_loop_window` that mean "give up"
    crash_loop_window: float = 300.0


@dataclass(frozen=True)
class VmDesired:
    power_state: PowerState
    restart_policy: RestartPolicy
    deleted: bool = False


@dataclass(frozen=True)
class VmObserved:
    running: bool
    last_exit_code: int | None = None  # None: never ran, or exit status unknown (adopted)
    last_exit_at: float | None = None
    stopped_by_us: bool = False  # the last exit followed our own stop
    recent_restarts: tuple[float, ...] = ()  # times of policy restarts


@dataclass(frozen=True)
class VmDecision:
    action: VmAction
    status: VmStatus
    reason: str | None = None
    not_before: float | None = None  # for WAIT: when the restart is due


def _crashed(observed: VmObserved) -> bool:
    return observed.last_exit_at is not None and not observed.stopped_by_us


def _failed(observed: VmObserved) -> bool:
    """A crash: an exit we did not ask for that was not a clean power-off by the guest."""
    return _crashed(observed) and observed.last_exit_code != 0


def restart_delay(restarts: int, rules: RestartRules) -> float:
    return float(min(rules.max_delay, rules.base_delay * 2**restarts))


def decide(
    desired: VmDesired, observed: VmObserved, now: float, rules: RestartRules = RestartRules()
) -> VmDecision:
    if desired.deleted:
        return VmDecision(VmAction.REMOVE, VmStatus.DELETING)
    if desired.power_state is PowerState.STOPPED:
        if observed.running:
            return VmDecision(VmAction.STOP, VmStatus.STOPPING)
        return VmDecision(VmAction.NOTHING, VmStatus.STOPPED)
    if observed.running:
        return VmDecision(VmAction.NOTHING, VmStatus.RUNNING)
    if observed.last_exit_at is None or observed.stopped_by_us:
        return VmDecision(VmAction.LAUNCH, VmStatus.STARTING)  # first start, or start again
    return _after_exit(desired, observed, now, rules)


def _after_exit(
    desired: VmDesired, observed: VmObserved, now: float, rules: RestartRules
) -> VmDecision:
    """The VM ended on its own while it should run: the restart policy decides."""
    code = observed.last_exit_code
    if code is None:  # it ended while the daemon was not watching (down, or restarting)
        how = "ended while the daemon was not watching it (exit status unknown)"
    else:
        how = "exited cleanly" if code == 0 else f"died (exit status {code})"
    policy = desired.restart_policy
    wants_restart = policy is RestartPolicy.ALWAYS or (
        policy is RestartPolicy.ON_FAILURE and _failed(observed)
    )
    if not wants_restart:
        status = VmStatus.CRASHED if _failed(observed) else VmStatus.STOPPED
        return VmDecision(VmAction.NOTHING, status, f"qemu {how}; restart policy {policy.value}")
    recent = [t for t in observed.recent_restarts if now - t < rules.crash_loop_window]
    if len(recent) >= rules.crash_loop_limit:
        return VmDecision(
            VmAction.NOTHING,
            VmStatus.ERROR,
            f"crash loop: {len(recent)} restarts within {rules.crash_loop_window:g} s; "
            f"last: qemu {how}",
        )
    assert observed.last_exit_at is not None
    due = observed.last_exit_at + restart_delay(len(recent), rules)
    if now < due:
        return VmDecision(
            VmAction.WAIT, VmStatus.CRASHED, f"qemu {how}; restarting in {due - now:.1f} s", due
        )
    return VmDecision(VmAction.LAUNCH, VmStatus.STARTING, f"restart after qemu {how}")
