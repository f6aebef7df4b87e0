"""Backoff with an injected clock (no sleeping) and the status transition table."""

from __future__ import annotations

import pytest

from app.domain.retry import Backoff
from app.domain.status import IllegalTransition, Status, check_transition, is_settled


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_backoff_doubles_caps_and_resets() -> None:
    clock = FakeClock()
    backoff = Backoff(clock, base=0.5, cap=4)
    assert backoff.due("x")
    assert [backoff.failed("x") for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert not backoff.due("x")
    assert backoff.next_due() == 104.0
    clock.now = 104.0
    assert backoff.due("x")
    assert backoff.due_keys() == ["x"]
    backoff.succeeded("x")
    assert backoff.attempts("x") == 0
    assert backoff.next_due() is None


def test_transitions() -> None:
    assert check_transition(Status.ACTIVE, Status.PENDING) is Status.PENDING
    assert check_transition(Status.ERROR, Status.DELETING) is Status.DELETING
    with pytest.raises(IllegalTransition):
        check_transition(Status.DELETING, Status.ACTIVE)


def test_settled() -> None:
    assert is_settled(Status.ACTIVE, 3, 3)
    assert is_settled(Status.ERROR, 3, 3)
    assert not is_settled(Status.ACTIVE, 4, 3)
    assert not is_settled(Status.PENDING, 3, 3)
    assert not is_settled(Status.DELETING, 3, 3)
