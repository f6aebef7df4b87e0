"""Event ids: increasing across restarts (reserved blocks), and what a resuming client gets."""

from __future__ import annotations

import threading
import time
from typing import Any

from app.bus import EventBus


class Sequence:
    """Stands in for the database's event id sequence (app.db.repositories.reserve_event_ids)."""

    def __init__(self) -> None:
        self.next_id = 1
        self.calls = 0
        self.lock = threading.Lock()

    def reserve(self, count: int, minimum: int) -> int:
        with self.lock:
            start = max(self.next_id, minimum)
            self.next_id = start + count
            self.calls += 1
            return start


def publish(bus: EventBus, n: int = 1) -> list[int]:
    fields: dict[str, Any] = {"type": "tap.active", "resource": "tap", "name": "t", "status": "x"}
    return [bus.publish(resource_id="r", **fields).id for _ in range(n)]


def test_ids_without_persistence_start_at_one() -> None:
    bus = EventBus()
    assert bus.last_id == 0
    assert publish(bus, 3) == [1, 2, 3]


def test_a_restarted_bus_never_reuses_an_id() -> None:
    sequence = Sequence()
    first = EventBus(id_block=100)
    first.persist_ids(sequence.reserve)
    before = publish(first, 5)
    assert before == [1, 2, 3, 4, 5]
    second = EventBus(id_block=100)  # a restart: the first run's block is not handed out again
    second.persist_ids(sequence.reserve)
    after = publish(second, 3)
    assert min(after) > max(before)
    assert after == sorted(after)


def test_ids_move_on_to_the_next_block_and_stay_reserved() -> None:
    sequence = Sequence()
    bus = EventBus(id_block=4)
    bus.persist_ids(sequence.reserve)
    ids: list[int] = []
    for _ in range(20):
        ids += publish(bus)
        deadline = time.monotonic() + 5
        while bus._reserving and time.monotonic() < deadline:  # the background reservation
            time.sleep(0.001)
    assert ids == sorted(set(ids)), ids
    assert sequence.calls >= 5  # a new block every 4 ids
    assert max(ids) < sequence.next_id  # every id handed out lies inside a reserved block
    restarted = EventBus(id_block=4)
    restarted.persist_ids(sequence.reserve)
    assert publish(restarted) > [max(ids)]


def test_replay_or_reset() -> None:
    sequence = Sequence()
    sequence.next_id = 1000  # as after earlier runs
    bus = EventBus(history=3, id_block=100)
    bus.persist_ids(sequence.reserve)
    assert bus.replay(999) == []  # right before this run's first id: nothing missed yet
    assert bus.replay(998) is None  # an id of an earlier run: events may have been missed
    ids = publish(bus, 5)  # 1000..1004; the ring keeps 1002..1004
    assert [e.id for e in bus.replay(1001) or []] == [1002, 1003, 1004]
    assert bus.replay(1004) == []
    assert bus.replay(1000) is None  # 1001 fell out of the ring
    assert bus.replay(ids[-1] + 1) is None  # never handed out: unknown
    assert bus.replay(None) is None
