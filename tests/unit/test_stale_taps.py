"""The VM worker's note of taps whose NIC a forced delete removed (app.supervisor.vms)."""

from __future__ import annotations

from app.db.models import VmNic
from app.supervisor.vms import VmState, _note_stale_taps


def test_a_removed_nics_tap_is_dropped_once() -> None:
    state = VmState("vm-1")
    kept = VmNic(id="n0", vm_id="vm-1", position=0, mac="52:54:00:00:00:01", backend="bridge")
    kept.tap_name = "kvabc-0"
    _note_stale_taps(state, {"kvabc-0", "kvabc-1"}, [kept])
    assert state.taps == {"kvabc-1"}  # goes with the next stop or clean-up
    state.taps.clear()  # dropped
    _note_stale_taps(state, {"kvabc-0", "kvabc-1"}, [kept])
    assert state.taps == set(), "noted once: no netlink call on every pass"
