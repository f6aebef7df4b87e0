"""A link pass loads its desired state from one database snapshot.

pysqlite opens a transaction only before a write (its legacy transaction control), so the
SELECTs of a read-only unit used to run each on its own: a bridge committed by the API
between the pass's query of every bridge's facts (app.db.repositories.links.bridge_facts)
and its query of the bridge rows was a row without facts, and the whole pass failed with a
KeyError (seen while tests/api/test_ports_api.py ran: a full pass every 0.5 s against a
bridge being created). The commit is placed in that gap here, on purpose, through
SQLAlchemy's `before_cursor_execute` event; netlink and the kernel are the real ones.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, inspect

from app.supervisor.loop import Supervisor
from tests.api.test_links_api import make_bridge

BRIDGE_FACTS = "SELECT bridges.id, bridges.ifname, bridges.mtu \nFROM bridges"


def test_a_bridge_created_while_a_pass_loads_does_not_fail_the_pass(
    api: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    make_bridge(api, "br0")
    supervisor: Supervisor = api.app.state.supervisor  # type: ignore[attr-defined]
    engine = supervisor.db.engine
    committed = threading.Event()
    passes_then: list[int] = []

    facts_read = threading.Event()

    def commit_in_the_gap(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        """Right after the pass read every bridge's facts, before its next query."""
        if committed.is_set() or threading.current_thread().name != "supervisor":
            return
        if not facts_read.is_set():
            if statement.strip() == BRIDGE_FACTS:
                facts_read.set()
            return
        committed.set()  # first: the POST below runs queries of its own
        passes_then.append(supervisor.passes)
        r = api.post("/v1/bridges", json={"name": "br1"})  # no wait: this thread runs passes
        assert r.status_code == 202, r.text

    event.listen(engine, "before_cursor_execute", commit_in_the_gap)
    try:
        with caplog.at_level(logging.ERROR, logger="app.supervisor"):
            supervisor.resync()
            assert committed.wait(10)
            deadline = time.monotonic() + 10
            while supervisor.passes <= passes_then[0] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert supervisor.passes > passes_then[0]
    finally:
        event.remove(engine, "before_cursor_execute", commit_in_the_gap)
    failures = [r.getMessage() for r in caplog.records if "pass failed" in r.getMessage()]
    assert failures == []
    # and the bridge committed in the gap is made by a later pass
    deadline = time.monotonic() + 10
    while api.get("/v1/bridges/br1").json()["status"] != "active":
        assert time.monotonic() < deadline, api.get("/v1/bridges/br1").json()
        time.sleep(0.1)


def test_a_bug_recording_one_tap_stays_on_that_tap(
    api: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Recording one row's result raises something unexpected (a KeyError, as the bug above
    did): that row says so and backs off; the other rows of the pass settle."""
    make_bridge(api, "br0")
    supervisor: Supervisor = api.app.state.supervisor  # type: ignore[attr-defined]
    sessions = supervisor.db._sessions  # the sessionmaker: its flushes

    def a_bug_about_tapbad(session: Any, *_args: Any) -> None:
        if threading.current_thread().name != "supervisor":
            return
        for row in session.dirty:  # its status, not the reason it is then given
            if getattr(row, "name", None) == "tapbad" and inspect(row).attrs.status.history.added:
                raise KeyError("tapbad")

    event.listen(sessions, "before_flush", a_bug_about_tapbad)
    try:
        with caplog.at_level(logging.ERROR, logger="app.supervisor"):
            for name in ("tapbad", "tapok"):
                r = api.post("/v1/taps", json={"name": name, "bridge": "br0"})
                assert r.status_code == 202, r.text
            deadline = time.monotonic() + 20
            while api.get("/v1/taps/tapok").json()["status"] != "active":
                assert time.monotonic() < deadline, api.get("/v1/taps/tapok").json()
                time.sleep(0.1)
            bad = api.get("/v1/taps/tapbad").json()
            while "KeyError" not in str(bad["status_reason"]):
                assert time.monotonic() < deadline, bad
                time.sleep(0.1)
                bad = api.get("/v1/taps/tapbad").json()
    finally:
        event.remove(sessions, "before_flush", a_bug_about_tapbad)
    assert bad["status_reason"].startswith("retrying with backoff: internal error"), bad
    failures = [r.getMessage() for r in caplog.records if "pass failed" in r.getMessage()]
    assert failures == []
