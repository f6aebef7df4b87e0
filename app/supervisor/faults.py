"""Logging of persistent failures at a bounded rate, and which failures are transient, for
every worker.

A failure that repeats (one object that cannot be reconciled, or a whole pass that keeps
failing) is retried with backoff and reported on its object; its log lines must not grow
with the retries. `FaultLog` writes the first occurrence of a failure with its traceback,
then at most one line per `interval` seconds while the same failure repeats (saying how many
attempts failed meanwhile), and one line when it ends. The clock is injected.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from app.host.errors import HostError

DEFAULT_INTERVAL = 60.0  # seconds between two lines about the same persistent failure


@dataclass
class _Fault:
    message: str
    logged_at: float
    repeats: int = 0  # failures since the last line


class FaultLog:
    """Per-key failure logging: first occurrence with traceback, then rate-limited."""

    def __init__(
        self,
        log: logging.Logger,
        clock: Callable[[], float] = time.monotonic,
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self.log = log
        self.clock = clock
        self.interval = interval
        self._faults: dict[str, _Fault] = {}

    def failed(self, key: str, what: str, exc: BaseException) -> None:
        """`what` (e.g. "bridge br0") failed with `exc`; log it if this is news or the last
        line about it is older than `interval`."""
        message = f"{type(exc).__name__}: {exc}"
        now = self.clock()
        fault = self._faults.get(key)
        if fault is None or fault.message != message:
            self._faults[key] = _Fault(message, now)
            self.log.error("%s failed: %s", what, message, exc_info=exc)
            return
        fault.repeats += 1
        if now - fault.logged_at >= self.interval:
            self.log.error(
                "%s still failing (%d more attempts since the last report): %s",
                what,
                fault.repeats,
                message,
            )
            fault.logged_at, fault.repeats = now, 0

    def succeeded(self, key: str, what: str) -> None:
        """`what` works again: one line if it had failed."""
        if self._faults.pop(key, None) is not None:
            self.log.info("%s works again", what)

    def failing(self, key: str) -> bool:
        return key in self._faults


def is_transient(exc: BaseException) -> bool:
    """Whether a failure is worth retrying soon by itself, the one rule every worker follows:
    a host error says so itself (app.host.errors.HostError.transient), a deadline that passed
    (TimeoutError) always is, anything else is not (it waits for a change or the resync)."""
    if isinstance(exc, HostError):
        return exc.transient
    return isinstance(exc, TimeoutError)


def describe(exc: BaseException) -> str:
    """The status_reason of an object whose reconcile raised something unexpected."""
    return f"internal error while reconciling: {type(exc).__name__}: {exc}"[:1000]
