"""In-process event bus: the supervisor publishes state transitions, the API streams them.

State lives in the database; the bus only carries notifications. Publishing is thread-safe
(the supervisor runs in its own thread); subscribers are asyncio queues on the API's loop.
A bounded ring of recent events lets an SSE client resume with Last-Event-ID.

Event ids only ever increase, also across daemon restarts: once `persist_ids` is called, ids
come from blocks reserved in the database (a block is taken at start-up and the next one in
the background when half of the current one is used), so a restarted daemon never hands out
an id a client may already hold. `replay` tells a resuming client whether it can continue
(the events after its id are all still in the ring) or must re-read state (a `reset`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger(__name__)

IdReserver = Callable[[int, int], int]
"""reserve(count, minimum) -> the first of `count` ids never handed out before, >= minimum."""

ID_BLOCK = 1_000_000
"""Ids reserved per database write (one at start-up; about 9e12 restarts fit in an int64)."""
RESERVE_RETRY = 5.0
"""Seconds before a failed reservation is tried again."""


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
    # the resource's project (ResourceColumns.event_fields has carried it since 0017)
    project_id: str | None = None

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
    def __init__(
        self, history: int = 4096, subscriber_queue: int = 8192, id_block: int = ID_BLOCK
    ) -> None:
        self._lock = threading.Lock()
        self._history: deque[Event] = deque(maxlen=history)
        self._subscribers: set[_Subscriber] = set()
        # waiters for one resource: a thousand concurrent ?wait= calls must not each see
        # every event of the others
        self._by_resource: dict[str, set[_Subscriber]] = {}
        self._subscriber_queue = subscriber_queue
        self._last_by_resource: dict[str, Event] = {}  # forgotten with the resource
        self._next_id = 1
        # a client whose last id is below this may have missed events: it gets a reset
        self._floor = 0
        self._id_block = id_block
        self._reserve: IdReserver | None = None  # None: ids live only as long as the process
        self._block_end = 0  # first id past the current reserved block
        self._spare: int | None = None  # start of the next reserved block, once it is taken
        self._reserving = False
        self._reserve_after = 0.0  # monotonic time before which no reservation is retried

    # ---- ids -------------------------------------------------------------------------------

    def persist_ids(self, reserve: IdReserver) -> None:
        """From now on take ids from blocks that `reserve` hands out (the database's event id
        sequence). Call before anything publishes; blocks until the first block is taken."""
        start = reserve(self._id_block, self._next_id)
        with self._lock:
            self._reserve = reserve
            self._next_id = start
            self._floor = start - 1
            self._block_end = start + self._id_block

    def _take_id(self) -> int:
        """The next id (the lock is held). Moves to the spare block at the end of the current
        one, and has the next spare reserved once half of the current block is used."""
        if self._reserve is None:
            event_id, self._next_id = self._next_id, self._next_id + 1
            return event_id
        if self._next_id >= self._block_end and self._spare is not None:
            self._next_id = max(self._next_id, self._spare)
            self._block_end = self._spare + self._id_block
            self._spare = None
        event_id, self._next_id = self._next_id, self._next_id + 1
        if event_id == self._block_end:  # the spare is late: ids go on past the reservation
            log.warning("event id block used up before the next one was reserved")
        if self._spare is None and event_id >= self._block_end - self._id_block // 2:
            self._start_reserving()
        return event_id

    def _start_reserving(self) -> None:
        # never on the publishing thread: it may hold the database's write lock
        if self._reserving or time.monotonic() < self._reserve_after:
            return
        self._reserving = True
        threading.Thread(target=self._reserve_spare, name="event-ids", daemon=True).start()

    def _reserve_spare(self) -> None:
        reserve = self._reserve
        assert reserve is not None
        with self._lock:
            minimum = max(self._next_id, self._block_end)
        try:
            start: int | None = reserve(self._id_block, minimum)
        except Exception:
            log.exception("could not reserve event ids; trying again in %s s", RESERVE_RETRY)
            start = None
        with self._lock:
            self._spare = start
            self._reserving = False
            if start is None:
                self._reserve_after = time.monotonic() + RESERVE_RETRY

    # ---- publishing ------------------------------------------------------------------------

    def publish(self, **fields: Any) -> Event:
        gone: list[_Subscriber] = []
        with self._lock:
            event = Event(id=self._take_id(), **fields)
            if len(self._history) == self._history.maxlen:
                self._floor = self._history[0].id  # about to fall out of the ring
            self._history.append(event)
            if event.type.endswith(".deleted"):
                self._last_by_resource.pop(event.resource_id, None)
            else:
                self._last_by_resource[event.resource_id] = event
            # offered under the lock, so every queue gets events in id order (a stream that
            # replays history skips what it already sent by id)
            for sub in (*self._subscribers, *self._by_resource.get(event.resource_id, ())):
                try:
                    sub.loop.call_soon_threadsafe(sub.offer, event)
                except RuntimeError:  # loop closed
                    gone.append(sub)
        for sub in gone:
            self._discard(sub)
        return event

    def since(self, last_id: int) -> list[Event]:
        with self._lock:
            return [e for e in self._history if e.id > last_id]

    def replay(self, last_id: int | None) -> list[Event] | None:
        """The events after `last_id` (a client's Last-Event-ID), or None when the client must
        re-read state instead: its id is older than the ring (or than this daemon's start),
        or newer than any id handed out (unknown)."""
        with self._lock:
            if last_id is None or not self._floor <= last_id < self._next_id:
                return None
            return [e for e in self._history if e.id > last_id]

    def last_for(self, resource_id: str) -> Event | None:
        """The latest event about a resource (None once it is deleted, or before any)."""
        with self._lock:
            return self._last_by_resource.get(resource_id)

    @property
    def last_id(self) -> int:
        """The newest id handed out (before any: the id just below the first one to come)."""
        with self._lock:
            return self._next_id - 1

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
