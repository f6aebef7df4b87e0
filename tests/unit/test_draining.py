"""app.api.draining: a watch hands out queue items until draining begins (from any thread),
then answers DRAINED at once, also to watches started afterwards; a timeout is TIMED_OUT."""

from __future__ import annotations

import asyncio
import threading
import time

from app.api.draining import DRAINED, TIMED_OUT, Drain


def test_items_then_timeout_then_drained_from_another_thread() -> None:
    async def scenario() -> list[object]:
        drain = Drain()
        queue: asyncio.Queue[int] = asyncio.Queue()
        seen: list[object] = []
        async with drain.watch() as watch:
            queue.put_nowait(1)
            seen.append(await watch.get(queue, 1))
            seen.append(await watch.get(queue, 0.01))
            threading.Timer(0.05, drain.begin).start()  # a signal handler's thread, say
            started = time.monotonic()
            seen.append(await watch.get(queue, 30))
            assert time.monotonic() - started < 5
        assert queue.qsize() == 0 and drain.begun
        queue.put_nowait(2)  # a watch started while draining returns at once
        async with drain.watch() as late:
            seen.append(await late.get(queue, 30))
        assert queue.qsize() == 1, "a drained get takes no item"
        await drain.wait()
        return seen

    assert asyncio.run(scenario()) == [1, TIMED_OUT, DRAINED, DRAINED]


def test_begin_without_waiters_and_twice_is_harmless() -> None:
    drain = Drain()
    drain.begin()
    drain.begin()
    assert drain.begun
