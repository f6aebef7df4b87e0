"""The supervisor's full-pass timing hook (app/supervisor/loop.py), which bench/vlans.py reads:
every full pass (the start-up one, each resync) is counted and timed; other passes are not."""

from __future__ import annotations

import time
from collections.abc import Callable

from fastapi.testclient import TestClient


def wait_for(predicate: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_each_full_pass_is_counted_and_timed_and_no_other(api: TestClient) -> None:
    supervisor = api.app.state.supervisor  # type: ignore[attr-defined]
    assert supervisor.full_passes == 1  # the start-up pass (ready is set by it)
    first = supervisor.last_full_pass_s
    assert first is not None and 0 < first < 10

    passes = supervisor.passes
    supervisor.nudge()  # a pass over what is dirty: not a full one
    wait_for(lambda: supervisor.passes > passes)
    assert supervisor.full_passes == 1 and supervisor.last_full_pass_s == first

    supervisor.resync()
    wait_for(lambda: supervisor.full_passes == 2)
    last = supervisor.last_full_pass_s
    assert last is not None and last > 0 and last != first
