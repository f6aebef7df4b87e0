"""In-process event bus: the supervisor publishes state transitions, the API streams them.

State lives in the database; the bus only carries notifications. Publishing is thread-safe
(the supervisor runs in its own thread); subscribers are asyncio queues on the API's loop.
A bounded ring of recent events lets an SSE client resume with Last-Event-ID.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    id: int
    type: str  # e.g. "tap.active", "bridge.deleted", "tap.drift_repaired"
    resource: str  # "bridge", "tap", ...
    resource_id: str
    name: str
    status: str
    status_reason: str | None = None
    generation: int = 0
    observed_generation: int = 0
    time: float = field(default_factory=time.time)
    data: dict[str, Any] | None = None  # the event's own payload (a QMP event's data)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Subscriber:
    def __init__(
        self, loop: asyncio.AbstractEventLoop, maxsize: int, resource_id: str | None
    ) -> None:
        self.loop = loop
        self.resource_id = resource_id
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=maxsize)
        self.overflowed = False

    def offer(self, event: Event) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            # a slow consumer loses its stream rather than the daemon's memory
            self.overflowed = True
            self.queue.get_nowait()
            self.queue.put_nowait(None)


class EventBus:
    def __init__(self, history: int = 4096, subscriber_queue: int = 8192) -> None:
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._history: deque[Event] = deque(maxlen=history)
        self._subscribers: set[_Subscriber] = set()
        # waiters for one resource: a thousand concurrent ?wait= calls must not each see
        # every event of the others
        self._by_resource: dict[str, set[_Subscriber]] = {}
        self._subscriber_queue = subscriber_queue
        self._last_by_resource: dict[str, Event] = {}  # forgotten with the resource

    def publish(self, **fields: Any) -> Event:
        with self._lock:
            event = Event(id=next(self._ids), **fields)
            self._history.append(event)
            if event.type.endswith(".deleted"):
                self._last_by_resource.pop(event.resource_id, None)
            else:
                self._last_by_resource[event.resource_id] = event
            subscribers = [*self._subscribers, *self._by_resource.get(event.resource_id, ())]
        for sub in subscribers:
            try:
                sub.loop.call_soon_threadsafe(sub.offer, event)
            except RuntimeError:  # loop closed
                self._discard(sub)
        return event

    def since(self, last_id: int) -> list[Event]:
        with self._lock:
            return [e for e in self._history if e.id > last_id]

    def last_for(self, resource_id: str) -> Event | None:
        """The latest event about a resource (None once it is deleted, or before any)."""
        with self._lock:
            return self._last_by_resource.get(resource_id)

    @property
    def last_id(self) -> int:
        with self._lock:
            return self._history[-1].id if self._history else 0

    @contextmanager
    def subscribe(self, resource_id: str | None = None) -> Iterator[asyncio.Queue[Event | None]]:
        """An asyncio queue of events (all, or one resource's) for the current loop; None in
        the queue means it overflowed and the subscriber should re-read state."""
        sub = _Subscriber(asyncio.get_running_loop(), self._subscriber_queue, resource_id)
        with self._lock:
            if resource_id is None:
                self._subscribers.add(sub)
            else:
                self._by_resource.setdefault(resource_id, set()).add(sub)
        try:
            yield sub.queue
        finally:
            self._discard(sub)

    def _discard(self, sub: _Subscriber) -> None:
        with self._lock:
            if sub.resource_id is None:
                self._subscribers.discard(sub)
                return
            waiters = self._by_resource.get(sub.resource_id)
            if waiters is not None:
                waiters.discard(sub)
                if not waiters:
                    del self._by_resource[sub.resource_id]
