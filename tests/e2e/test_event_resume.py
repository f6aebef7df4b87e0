"""Resumable events (issue 9, item 5): ids increase across daemon restarts (kill -9
included), a client whose Last-Event-ID cannot be continued gets a `reset` first, and no
event reaches a client twice between the replay and the live stream."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.daemon import Daemon

Sse = dict[str, Any]  # {"event": ..., "id": ..., "data": {...}}


def read_events(lines: Iterator[str]) -> Iterator[Sse]:
    """Server-sent events of a text/event-stream, pings skipped."""
    current: Sse = {}
    for line in lines:
        if not line:
            if "data" in current:
                yield current
            current = {}
        elif line.startswith(("event:", "id:", "data:")):
            key, _, value = line.partition(":")
            current[key] = json.loads(value) if key == "data" else value.strip()


def collect(
    client: httpx.Client | TestClient,
    last_event_id: str | None,
    until: Callable[[list[Sse]], bool],
    path: str = "/v1/events",
    timeout: float = 20,
) -> list[Sse]:
    headers = {} if last_event_id is None else {"Last-Event-ID": last_event_id}
    seen: list[Sse] = []
    deadline = time.monotonic() + timeout
    real = isinstance(client, httpx.Client)
    kwargs = {"timeout": httpx.Timeout(10, read=timeout)} if real else {}
    with client.stream("GET", path, headers=headers, **kwargs) as response:
        assert response.status_code == 200
        for event in read_events(response.iter_lines()):
            seen.append(event)
            if until(seen):
                return seen
            assert time.monotonic() < deadline, f"stream ended early: {seen}"
    raise AssertionError(f"stream closed: {seen}")


def settled(name: str) -> Callable[[list[Sse]], bool]:
    return lambda seen: any(
        e["data"].get("name") == name and e["data"].get("status") == "active" for e in seen
    )


def make_bridge(client: httpx.Client, name: str) -> None:
    r = client.post("/v1/bridges?wait=10", json={"name": name})
    assert r.status_code == 201, r.text


@pytest.mark.e2e
def test_ids_increase_across_restarts_and_old_ids_get_a_reset(daemon: Daemon) -> None:
    with daemon.client() as c:
        make_bridge(c, "br0")
        first_run = collect(c, "0", settled("br0"))  # "0": the whole history of a fresh daemon
    assert first_run[0]["event"] == "bridge.pending"
    last = max(int(e["id"]) for e in first_run)

    daemon.kill()  # kill -9: nothing gets written on the way out
    daemon.start()
    with daemon.client() as c:
        make_bridge(c, "br1")
        resumed = collect(c, str(last), lambda seen: len(seen) >= 1)
        assert resumed[0]["event"] == "reset", resumed  # br1's events may have been missed
        reset_id = int(resumed[0]["id"])
        assert reset_id > last
        assert resumed[0]["data"]["requested_id"] == str(last)

        # from the reset's id the client follows on: the next change arrives, with newer ids
        follower: list[Sse] = []
        thread = threading.Thread(
            target=lambda: follower.extend(collect(c, str(reset_id), settled("br2")))
        )
        thread.start()
        time.sleep(0.5)
        with daemon.client() as other:
            make_bridge(other, "br2")
        thread.join(30)
        assert [e["event"] for e in follower] == ["bridge.pending", "bridge.active"], follower
        assert all(int(e["id"]) > reset_id for e in follower)

        for unknown in ("999999999999", "abc", "-1"):  # never handed out, or not an id
            assert collect(c, unknown, lambda seen: True)[0]["event"] == "reset"


def test_resume_sends_each_event_once(api: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """An event published after the stream subscribed but before it read the history is in
    both: the client must get it once, in order."""
    bus = api.app.state.context.bus  # type: ignore[attr-defined]

    def publish() -> int:
        fields = {"type": "probe.tick", "resource": "probe", "name": "p", "status": "active"}
        return int(bus.publish(resource_id="p", **fields).id)

    ids = [publish() for _ in range(10)]
    subscribe = bus.subscribe

    @contextmanager
    def subscribe_then_publish(*args: Any, **kwargs: Any) -> Iterator[Any]:
        with subscribe(*args, **kwargs) as queue:
            ids.append(publish())  # lands in the queue and in the history
            yield queue

    monkeypatch.setattr(bus, "subscribe", subscribe_then_publish)
    after = threading.Timer(0.5, lambda: ids.append(publish()))  # then a live one
    after.start()
    seen = collect(api, str(ids[4]), lambda seen: len(seen) >= 7, "/v1/events?resource=probe")
    after.join()
    assert [int(e["id"]) for e in seen] == ids[5:], "events missing, repeated or out of order"
