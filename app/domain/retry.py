"""Retry bookkeeping with exponential backoff; the clock is injected so tests never sleep."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Per-key attempt counters; `due(key)` says whether a retry may run now."""

    clock: Callable[[], float]
    base: float = 0.2
    cap: float = 30.0
    _attempts: dict[str, int] = field(default_factory=dict)
    _not_before: dict[str, float] = field(default_factory=dict)

    def failed(self, key: str) -> float:
        """Record a failure; return the delay before the next attempt."""
        attempts = self._attempts.get(key, 0) + 1
        self._attempts[key] = attempts
        delay = min(self.cap, self.base * float(2 ** (attempts - 1)))
        self._not_before[key] = self.clock() + delay
        return delay

    def succeeded(self, key: str) -> None:
        self._attempts.pop(key, None)
        self._not_before.pop(key, None)

    def due(self, key: str) -> bool:
        return self.clock() >= self._not_before.get(key, 0.0)

    def due_keys(self) -> list[str]:
        now = self.clock()
        return [key for key, at in self._not_before.items() if now >= at]

    def next_due(self) -> float | None:
        """The earliest time a backed-off key becomes due, or None."""
        return min(self._not_before.values(), default=None)

    def attempts(self, key: str) -> int:
        return self._attempts.get(key, 0)

    def snapshot(self) -> tuple[dict[str, int], dict[str, float]]:
        """Every key's state now, for `restore` (a write that was refused and is redone)."""
        return dict(self._attempts), dict(self._not_before)

    def restore(self, state: tuple[dict[str, int], dict[str, float]]) -> None:
        """Back to a `snapshot`: what happened since is forgotten."""
        self._attempts, self._not_before = dict(state[0]), dict(state[1])
