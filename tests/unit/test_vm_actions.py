"""The VM action table as data (app.domain.vm_actions): complete, and each cell well formed.
What each cell does through the API, from a VM really in that status, is
tests/api/test_vm_actions.py."""

from __future__ import annotations

import pytest

from app.domain.errors import Conflict
from app.domain.vm_actions import (
    TABLE,
    ActionRefused,
    Effect,
    StopMode,
    VmVerb,
    check,
    desire_changes,
    outcome,
)
from app.domain.vms import PowerState, VmStatus

CELLS = [(status, verb) for status in VmStatus for verb in VmVerb]


@pytest.mark.parametrize(("status", "verb"), CELLS)
def test_every_cell_is_well_formed(status: VmStatus, verb: VmVerb) -> None:
    cell = outcome(status, verb)
    if cell.effect is Effect.REFUSE:
        assert cell.reason and cell.http_status == 409
        with pytest.raises(ActionRefused) as refused:
            check(status, verb, "vm1")
        assert isinstance(refused.value, Conflict)
        assert status.value in refused.value.detail and cell.reason in refused.value.detail
    else:
        assert check(status, verb, "vm1") is cell
    if cell.effect is Effect.DESIRE:
        assert cell.power is not None
        expected = {VmVerb.START: PowerState.RUNNING}.get(verb, PowerState.STOPPED)
        assert verb in (VmVerb.START, VmVerb.STOP, VmVerb.KILL) and cell.power is expected
    if verb is VmVerb.DELETE:
        assert cell.effect is Effect.DELETE  # a delete is always possible (and repeatable)


def test_the_table_has_every_status_and_verb() -> None:
    assert set(TABLE) == set(VmStatus)
    assert all(set(row) == set(VmVerb) for row in TABLE.values())


def test_only_a_running_vm_can_be_reset() -> None:
    resets = {s for s in VmStatus if outcome(s, VmVerb.REBOOT).effect is Effect.RESET}
    assert resets == {VmStatus.RUNNING}


@pytest.mark.parametrize("status", [VmStatus.STOPPED, VmStatus.CRASHED, VmStatus.ERROR])
def test_a_start_after_an_exit_is_always_a_new_intent(status: VmStatus) -> None:
    """A crashed VM with policy never still wants `running`: the start must relaunch it."""
    cell = outcome(status, VmVerb.START)
    assert desire_changes(cell, PowerState.RUNNING, StopMode.GRACEFUL, settled_ok=False)


def test_kill_escalates_a_graceful_stop_but_not_a_finished_one() -> None:
    kill = outcome(VmStatus.STOPPING, VmVerb.KILL)
    assert desire_changes(kill, PowerState.STOPPED, StopMode.GRACEFUL, settled_ok=False)
    assert not desire_changes(kill, PowerState.STOPPED, StopMode.KILL, settled_ok=False)
    stop = outcome(VmStatus.STOPPED, VmVerb.STOP)
    assert not desire_changes(stop, PowerState.STOPPED, StopMode.KILL, settled_ok=True)
