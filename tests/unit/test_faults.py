"""Bounded logging of persistent failures (app.supervisor.faults), with an injected clock."""

from __future__ import annotations

import logging

import pytest

from app.supervisor.faults import FaultLog


def test_a_repeating_failure_is_logged_first_with_traceback_then_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    faults = FaultLog(logging.getLogger("test.faults"), lambda: now[0], interval=60)
    caplog.set_level(logging.INFO, logger="test.faults")
    for _ in range(1000):  # 1000 failures over 100 s
        faults.failed("br0", "bridge br0", ValueError("bad"))
        now[0] += 0.1
    lines = [r for r in caplog.records if r.name == "test.faults"]
    assert len(lines) == 2, [r.getMessage() for r in lines]
    assert lines[0].exc_info is not None  # the first time: with the traceback
    assert "more attempts since the last report" in lines[1].getMessage()
    assert faults.failing("br0")


def test_a_new_failure_is_news_and_recovery_is_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    faults = FaultLog(logging.getLogger("test.faults"), lambda: 0.0)
    caplog.set_level(logging.INFO, logger="test.faults")
    faults.failed("x", "VM x", ValueError("one"))
    faults.failed("x", "VM x", ValueError("one"))
    faults.failed("x", "VM x", KeyError("two"))  # another failure: logged at once
    faults.succeeded("x", "VM x")
    faults.succeeded("x", "VM x")  # nothing had failed any more: silent
    messages = [r.getMessage() for r in caplog.records if r.name == "test.faults"]
    assert messages == [
        "VM x failed: ValueError: one",
        "VM x failed: KeyError: 'two'",
        "VM x works again",
    ]
    assert not faults.failing("x")
