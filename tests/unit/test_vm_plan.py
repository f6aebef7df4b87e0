"""The VM worker's decisions, restart policy included: pure, with an explicit clock."""

from __future__ import annotations

from app.domain.vm_plan import RestartRules, VmAction, VmDesired, VmObserved, decide
from app.domain.vms import PowerState, RestartPolicy, VmStatus

RUN = PowerState.RUNNING
RULES = RestartRules(base_delay=1, max_delay=8, crash_loop_limit=3, crash_loop_window=100)


def want(policy: RestartPolicy = RestartPolicy.NEVER, power: PowerState = RUN) -> VmDesired:
    return VmDesired(power_state=power, restart_policy=policy)


def test_start_stop_delete() -> None:
    assert decide(want(), VmObserved(running=False), 0).action is VmAction.LAUNCH
    assert decide(want(), VmObserved(running=True), 0).status is VmStatus.RUNNING
    stop = decide(want(power=PowerState.STOPPED), VmObserved(running=True), 0)
    assert (stop.action, stop.status) == (VmAction.STOP, VmStatus.STOPPING)
    stopped = decide(want(power=PowerState.STOPPED), VmObserved(running=False), 0)
    assert (stopped.action, stopped.status) == (VmAction.NOTHING, VmStatus.STOPPED)
    deleted = VmDesired(power_state=RUN, restart_policy=RestartPolicy.ALWAYS, deleted=True)
    assert decide(deleted, VmObserved(running=True), 0).action is VmAction.REMOVE


def test_never_reports_the_crash_and_stays_down() -> None:
    crash = VmObserved(running=False, last_exit_code=-9, last_exit_at=10)
    decision = decide(want(RestartPolicy.NEVER), crash, 11, RULES)
    assert (decision.action, decision.status) == (VmAction.NOTHING, VmStatus.CRASHED)
    assert "exit status -9" in (decision.reason or "")


def test_on_failure_backs_off_then_restarts_but_not_after_a_clean_poweroff() -> None:
    crash = VmObserved(running=False, last_exit_code=1, last_exit_at=10, recent_restarts=(5,))
    waiting = decide(want(RestartPolicy.ON_FAILURE), crash, 10.5, RULES)
    assert (waiting.action, waiting.not_before) == (VmAction.WAIT, 12)  # 1 s * 2**1
    assert decide(want(RestartPolicy.ON_FAILURE), crash, 12, RULES).action is VmAction.LAUNCH
    clean = VmObserved(running=False, last_exit_code=0, last_exit_at=10)
    stays = decide(want(RestartPolicy.ON_FAILURE), clean, 50, RULES)
    assert (stays.action, stays.status) == (VmAction.NOTHING, VmStatus.STOPPED)
    again = decide(want(RestartPolicy.ALWAYS), clean, 50, RULES)
    assert again.action is VmAction.LAUNCH


def test_crash_loop_gives_up_with_the_reason() -> None:
    looping = VmObserved(
        running=False, last_exit_code=1, last_exit_at=50, recent_restarts=(10, 20, 30)
    )
    decision = decide(want(RestartPolicy.ALWAYS), looping, 60, RULES)
    assert (decision.action, decision.status) == (VmAction.NOTHING, VmStatus.ERROR)
    assert "crash loop" in (decision.reason or "")
    # restarts that left the window no longer count
    assert decide(want(RestartPolicy.ALWAYS), looping, 200, RULES).action is VmAction.LAUNCH


def test_an_explicit_stop_is_never_undone_by_the_policy() -> None:
    ours = VmObserved(running=False, last_exit_code=0, last_exit_at=10, stopped_by_us=True)
    assert (
        decide(want(RestartPolicy.ALWAYS, PowerState.STOPPED), ours, 11).action is VmAction.NOTHING
    )
    # and a later start request starts it at once, without backoff
    assert decide(want(RestartPolicy.ALWAYS), ours, 11).action is VmAction.LAUNCH


def test_backoff_is_capped() -> None:
    crash = VmObserved(running=False, last_exit_code=1, last_exit_at=0, recent_restarts=(-50, -40))
    rules = RestartRules(base_delay=1, max_delay=3, crash_loop_limit=10, crash_loop_window=100)
    assert decide(want(RestartPolicy.ALWAYS), crash, 0, rules).not_before == 3
