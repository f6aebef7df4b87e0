"""Draining: the daemon is stopping, so requests that would hold a connection answer now.

`kvmnetd serve` calls `Drain.begin()` on the first SIGTERM/SIGINT, before uvicorn waits for
open connections to close (the app's lifespan calls it too, for in-process use). From then
on every event stream sends a last `shutdown` event and ends, every pending `?wait=` answers
at once as if its time had run out (202 with the resource as it is, plus `Retry-After`), and
a new `?wait=` does not block. `begin()` is thread-safe and idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final, TypeVar

T = TypeVar("T")

RETRY_AFTER_SECONDS: Final = 5  # what a 202 answered while stopping tells the client


class Drained:
    """The marker `DrainWatch.get` returns once draining began."""


class TimedOut:
    """The marker `DrainWatch.get` returns when its timeout passed."""


DRAINED: Final = Drained()
TIMED_OUT: Final = TimedOut()


class Drain:
    def __init__(self) -> None:
        self._begun = threading.Event()
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = set()

    @property
    def begun(self) -> bool:
        return self._begun.is_set()

    def begin(self) -> None:
        """Wake every waiter (on its own loop); later waits return at once."""
        with self._lock:
            self._begun.set()
            waiters = list(self._waiters)
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits there
                loop.call_soon_threadsafe(_resolve, future)

    async def wait(self) -> None:
        """Return once draining began."""
        if self.begun:
            return
        loop = asyncio.get_running_loop()
        waiter = (loop, loop.create_future())
        with self._lock:
            if self.begun:
                return
            self._waiters.add(waiter)
        try:
            await waiter[1]
        finally:
            with self._lock:
                self._waiters.discard(waiter)

    @asynccontextmanager
    async def watch(self) -> AsyncIterator[DrainWatch]:
        """A DrainWatch for one request: reads from queues until draining begins."""
        drained = asyncio.ensure_future(self.wait())
        try:
            yield DrainWatch(self, drained)
        finally:
            drained.cancel()


class DrainWatch:
    def __init__(self, drain: Drain, drained: asyncio.Future[None]) -> None:
        self._drain = drain
        self._drained = drained

    async def get(
        self, queue: asyncio.Queue[T], timeout: float | None = None
    ) -> T | Drained | TimedOut:
        """The queue's next item; DRAINED once the daemon is stopping (an item that arrives
        together with the drain is still handed out first), TIMED_OUT after `timeout`."""
        if self._drain.begun:
            return DRAINED
        getter = asyncio.ensure_future(queue.get())
        try:
            await asyncio.wait(
                (getter, self._drained), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if not getter.done():
                getter.cancel()  # a cancelled Queue.get takes no item
        if getter.done() and not getter.cancelled():
            return getter.result()
        if self._drained.done():
            return DRAINED
        return TIMED_OUT


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
