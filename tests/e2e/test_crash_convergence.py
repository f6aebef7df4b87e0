"""`kill -9` in the middle of 100 concurrent tap creates: after a restart the daemon must
converge to exactly what it acknowledged (plus anything it committed but could not answer),
with no duplicate, half-made or orphaned links in the kernel."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import (
    E2EDaemon,
    is_settled,
    list_all,
    managed_links,
    ok,
    running_daemon,
    wait_for,
)
from tests.netns_tools import links

pytestmark = pytest.mark.e2e

BRIDGE = "brc"
TAPS = [f"t{i:03d}" for i in range(100)]
THREADS = 16
KILL_AFTER_ACKS = 30


@dataclass
class Results:
    """What the clients saw: acknowledged taps (202) by name, HTTP answers that were not a
    202, and requests that got no answer (the kill landed while they were in flight)."""

    acked: dict[str, dict[str, Any]] = field(default_factory=dict)
    operations: dict[str, str] = field(default_factory=dict)  # name -> Operation-Location
    rejected: dict[str, str] = field(default_factory=dict)
    unanswered: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    enough: threading.Event = field(default_factory=threading.Event)
    killed: threading.Event = field(default_factory=threading.Event)

    def answered(self, name: str, response: httpx.Response) -> None:
        with self.lock:
            if response.status_code == 202:
                self.acked[name] = response.json()
                self.operations[name] = response.headers.get("operation-location", "")
                if len(self.acked) >= KILL_AFTER_ACKS:
                    self.enough.set()
            else:
                self.rejected[name] = f"{response.status_code} {response.text}"

    def lost(self, name: str, error: Exception) -> None:
        with self.lock:
            self.unanswered[name] = repr(error)


def create_worker(daemon: E2EDaemon, names: list[str], lock: threading.Lock, out: Results) -> None:
    """Take names off the shared list and POST them until it is empty or the daemon died."""
    with daemon.client(timeout=10) as client:
        while not out.killed.is_set():
            with lock:
                if not names:
                    return
                name = names.pop(0)
            try:
                response = client.post("/v1/taps", json={"name": name, "bridge": BRIDGE})
            except httpx.TransportError as exc:  # the kill landed during this request
                out.lost(name, exc)
                continue
            out.answered(name, response)


def create_and_kill(daemon: E2EDaemon) -> Results:
    """100 creates from THREADS threads; kill -9 once KILL_AFTER_ACKS were answered."""
    out = Results()
    names = list(TAPS)
    lock = threading.Lock()
    workers = [
        threading.Thread(target=create_worker, args=(daemon, names, lock, out), daemon=True)
        for _ in range(THREADS)
    ]
    for worker in workers:
        worker.start()
    try:
        wait_for(
            lambda: out.enough.is_set() or not any(w.is_alive() for w in workers),
            30,
            f"{KILL_AFTER_ACKS} acknowledged creates",
        )
        assert out.enough.is_set(), f"{len(out.acked)} acked; {out.rejected or out.unanswered}"
        daemon.kill()  # while the other workers are still sending
    finally:
        out.killed.set()
        for worker in workers:
            worker.join(timeout=30)
    assert not any(w.is_alive() for w in workers)
    return out


def settled_taps(client: httpx.Client) -> list[dict[str, Any]] | None:
    taps = list_all(client, "taps")
    return taps if all(is_settled(t) for t in taps) else None


def assert_converged(
    netns: str, bridge: dict[str, Any], taps: list[dict[str, Any]], out: Results
) -> None:
    by_name = {t["name"]: t for t in taps}
    assert len(by_name) == len(taps), "a name appears twice in the database"
    for tap in taps:
        assert tap["status"] == "active", tap
        assert tap["bridge_id"] == bridge["id"], tap
    for name, acked in out.acked.items():
        assert name in by_name, f"acknowledged tap {name} is not in the database"
        assert by_name[name]["id"] == acked["id"]
    kernel = links(netns)
    for tap in taps:
        link = kernel.get(tap["name"])
        assert link is not None, f"{tap['name']} is in the database, not in the kernel"
        assert link.kind == "tun"
        assert link.master == BRIDGE, link
        assert link.up, link
        assert link.alias == f"kvmnetd:tap:{tap['id']}", link
        assert link.index == tap["ifindex"]
    wanted = {f"kvmnetd:tap:{t['id']}" for t in taps} | {f"kvmnetd:bridge:{bridge['id']}"}
    marked = {link.alias for link in managed_links(netns).values()}
    assert marked == wanted, f"orphans {marked - wanted}, missing {wanted - marked}"
    kernel_taps = [link for link in kernel.values() if link.kind == "tun"]
    assert len(kernel_taps) == len(taps)


def assert_operations_succeeded(client: httpx.Client, out: Results) -> None:
    """The operation of every acknowledged create survived the crash and ended well."""
    for name, location in out.operations.items():
        assert location.startswith("/v1/operations/"), (name, location)
        operation = ok(client.get(location), 200)
        assert operation["status"] == "succeeded", operation
        assert operation["resource_id"] == out.acked[name]["id"]


def test_kill_9_during_concurrent_creates_converges(
    netns: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with running_daemon(netns, tmp_path, request) as daemon:
        with daemon.client() as client:
            bridge = ok(client.post("/v1/bridges?wait=10", json={"name": BRIDGE}), 201)
        out = create_and_kill(daemon)
        assert not out.rejected, out.rejected  # while alive, every create is a 202
        assert KILL_AFTER_ACKS <= len(out.acked) < len(TAPS)  # the kill landed mid-stream
        assert daemon.proc is not None and daemon.proc.returncode == -9

        daemon.start()
        with daemon.client() as client:
            taps = wait_for(lambda: settled_taps(client), 30, "every tap to settle")
            bridge_now = ok(client.get(f"/v1/bridges/{bridge['id']}"), 200)
            assert_operations_succeeded(client, out)
        assert bridge_now["status"] == "active"
        assert sorted(p["name"] for p in bridge_now["ports"]) == sorted(t["name"] for t in taps)
        assert links(netns)[BRIDGE].alias == f"kvmnetd:bridge:{bridge['id']}"
        assert_converged(netns, bridge, taps, out)
