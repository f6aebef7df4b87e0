"""A persistent failure of one object never becomes a hot loop, in any worker.

Each worker gets one object it cannot reconcile, written the way an older version or a hand
edit would leave it (raw SQL): an uplink whose journal is unusable (the link supervisor), a VM
whose power state is unknown (the VM worker), a network whose DHCP range is garbage (the
network worker). Then, over a few idle seconds: each bad object says what is wrong on itself,
the passes, the log lines and the CPU time stay bounded, and new objects of every kind still
settle."""

from __future__ import annotations

import logging
import resource
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.settings import Settings
from tests.api.test_networks_api import make_stopped_vm

WINDOW = 3.0  # seconds of watching the daemon idle with its bad objects


def sql(settings: Settings, statement: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(settings.state_dir / "kvmnetd.db") as conn:
        return conn.execute(statement, args).fetchall()


def wait_for(predicate: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def created(api: TestClient, collection: str, body: dict[str, Any]) -> dict[str, Any]:
    r = api.post(f"/v1/{collection}?wait=15", json=body)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def status_of(settings: Settings, table: str, name: str) -> tuple[str, str | None]:
    ((status, reason),) = sql(
        settings, f"SELECT status, status_reason FROM {table} WHERE name = ?", name
    )
    return status, reason


def poison(api: TestClient, settings: Settings) -> None:
    """One object each worker cannot reconcile: the uplink's journal says a move was under
    way (a crash interrupted it) but what it saved cannot be read."""
    bridge = created(api, "bridges", {"name": "brbad"})
    now = "2026-11-30 00:00:00"
    sql(
        settings,
        "INSERT INTO uplinks (id, name, bridge_id, probe_timeout, take_mac, dhcp, phase, saved, "
        "steps, created_at, updated_at, deleted, status, generation, observed_generation) "
        "VALUES ('u-bad', 'eth9', ?, 5.0, 1, 'refuse', 'moving', '{\"addresses\": [1]}', "
        "'[]', ?, ?, 0, 'active', 1, 1)",
        bridge["id"],
        now,
        now,
    )
    created(api, "bridges", {"name": "br0"})
    make_stopped_vm(api, "vmbad")
    sql(settings, "UPDATE vms SET power_state = 'sideways' WHERE name = 'vmbad'")
    created(api, "bridges", {"name": "brnet"})
    created(api, "networks", {"name": "natbad", "bridge": "brnet", "subnet": "10.95.0.0/24"})
    sql(settings, "UPDATE networks SET range_start = 'garbage' WHERE name = 'natbad'")


def test_one_bad_object_per_worker_backs_off_and_the_rest_settles(
    api: TestClient, netns: str, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app")
    state = api.app.state  # type: ignore[attr-defined]
    poison(api, settings)
    state.supervisor.resync()
    state.network_worker.resync()
    state.vm_worker.nudge()
    bad = {"uplinks": "eth9", "vms": "vmbad", "networks": "natbad"}
    for table, name in bad.items():
        wait_for(lambda t=table, n=name: status_of(settings, t, n)[0] == "error")  # type: ignore[misc]
    reasons = {table: status_of(settings, table, name)[1] for table, name in bad.items()}
    assert str(reasons["uplinks"]).startswith("uplink journal: the saved NIC configuration")
    assert "sideways" in str(reasons["vms"])
    assert "garbage" in str(reasons["networks"])

    workers = (state.supervisor, state.vm_worker, state.network_worker)
    passes = [w.passes for w in workers]
    lines = len(caplog.records)
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    time.sleep(WINDOW)
    after = resource.getrusage(resource.RUSAGE_SELF)
    burnt = (after.ru_utime + after.ru_stime) - (cpu.ru_utime + cpu.ru_stime)
    window_passes = [w.passes - p for w, p in zip(workers, passes, strict=True)]
    window_lines = [r.getMessage() for r in caplog.records[lines:]]
    assert max(window_passes) <= 10, window_passes  # a hot loop makes thousands
    assert len(window_lines) <= 10, window_lines[:20]
    assert burnt < 0.5 * WINDOW, burnt
    # reported once per change: the rows still say the same, and no event per retry
    assert {table: status_of(settings, table, name)[1] for table, name in bad.items()} == reasons
    # each unexpected exception was logged once, with its traceback (the network's row is
    # refused before anything raises: its reason is all there is to say)
    failures = [r.name for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert sorted(failures) == ["app.supervisor.uplinks", "app.supervisor.vms"]

    # the API keeps answering for the bad objects: as errors saying what is wrong
    for collection in ("vms", "networks", "bridges"):
        assert api.get(f"/v1/{collection}").status_code == 200
    vm = api.get("/v1/vms/vmbad").json()
    assert vm["status"] == "error" and "power_state" in vm["status_reason"], vm
    network = api.get("/v1/networks/natbad").json()
    assert (network["status"], network["status_reason"]) == ("error", reasons["networks"])
    assert api.get("/v1/bridges/brbad/uplink").json()["status"] == "error"

    # new objects of every kind still settle meanwhile
    created(api, "bridges", {"name": "brok"})
    created(api, "taps", {"name": "tapok", "bridge": "brok"})
    created(api, "bridges", {"name": "brnet2"})
    network = created(
        api, "networks", {"name": "natok", "bridge": "brnet2", "subnet": "10.96.0.0/24"}
    )
    assert network["status"] == "active"
    vm = make_stopped_vm(api, "vmok")
    wait_for(lambda: api.get(f"/v1/vms/{vm['id']}").json()["status"] == "stopped")
    # and the bad objects can go (the uplink with its bridge's delete)
    for collection, name in (("vms", "vmbad"), ("networks", "natbad")):
        r = api.delete(f"/v1/{collection}/{name}?wait=15")
        assert r.status_code == 204, r.text
