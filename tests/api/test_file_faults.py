"""One object's damaged file stays that object's fault (issue 9, item 4): every kind of
damage (tests/faults.py) in a dnsmasq pid file, a lease file and the admin token file, with
the in-process app on the real kernel of a fresh namespace and real dnsmasq.

For a pid file the damage is done while no daemon runs (that is when it is read back: a
restarted daemon adopts dnsmasq through it). The restarted daemon must report it on that
network, adopt the dnsmasq that still runs (found by its command line: a second one could
not bind the network's sockets) or start a new one when it is gone, settle a network created
next, and signal nobody: the `sleep` whose pid was planted is still alive."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text, update

from app.db.models import Uplink
from app.db.session import Database
from app.main import create_app, load_or_create_token
from app.settings import Settings
from tests.api.test_links_api import make_bridge
from tests.api.test_networks_api import _comm, _eventually, make_network, make_stopped_vm
from tests.api.test_uplinks_api import lan, uplink
from tests.faults import KINDS, damage, stranger
from tests.netns_tools import processes_in

__all__ = ["lan", "stranger"]  # fixtures


def dnsmasqs(netns: str) -> list[int]:
    return [pid for pid in processes_in(netns) if _comm(pid) == "dnsmasq"]


def run_dir(settings: Settings, network: dict[str, Any]) -> Path:
    return settings.run_dir / "networks" / str(network["id"])


@pytest.fixture
def first(netns: str, settings: Settings) -> dict[str, Any]:
    """A network made by a daemon that then stopped (its dnsmasq keeps running)."""
    app = create_app(settings, token="t", host_netns=netns)
    with TestClient(app, base_url="http://kvmnetd") as api:
        make_bridge(api)
        return make_network(api)


@pytest.mark.parametrize("dnsmasq_alive", [True, False], ids=["dnsmasq-runs", "dnsmasq-gone"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_dnsmasq_pid_file_is_reported_and_healed(
    kind: str,
    dnsmasq_alive: bool,
    first: dict[str, Any],
    netns: str,
    settings: Settings,
    stranger: subprocess.Popen[bytes],
) -> None:
    old = int(first["dnsmasq_pid"])
    if not dnsmasq_alive:
        os.kill(old, signal.SIGKILL)
        assert _eventually(lambda: old not in dnsmasqs(netns))
    pidfile = run_dir(settings, first) / "dnsmasq.pid"
    good = f"{old}\n".encode()
    damage(pidfile, kind, good, stranger.pid, lambda pid: f"{pid}\n".encode())

    app = create_app(settings, token="t", host_netns=netns)
    with TestClient(app, base_url="http://kvmnetd") as api:
        assert app.state.network_worker.ready.wait(10)
        now = api.get("/v1/networks/nat0").json()
        assert now["status"] == "active", now
        if dnsmasq_alive:
            assert now["dnsmasq_pid"] == old  # adopted, not a second one
        assert now["dnsmasq_pid"] in dnsmasqs(netns)
        assert dnsmasqs(netns) == [now["dnsmasq_pid"]]
        # a link is refused even when it leads to the right pid (the run directory's files
        # are never followed)
        assert "pid file" in (now["status_reason"] or ""), now
        # another network created meanwhile settles
        make_bridge(api, "br1")
        other = make_network(api, name="nat1", bridge="br1", subnet="10.92.0.0/24")
        assert other["status"] == "active", other
        assert other["status_reason"] is None
        # the note goes with the network's next change
        r = api.patch("/v1/networks/nat0?wait=10", json={"domain": "kvm.test"})
        assert r.status_code == 200, r.text
        assert r.json()["status_reason"] is None
    assert stranger.poll() is None  # nobody signalled it


@pytest.mark.timeout(120)  # a FIFO read without O_NONBLOCK would hang
def test_a_damaged_lease_file_reads_as_the_leases_it_still_holds(
    api: TestClient, netns: str, settings: Settings, stranger: subprocess.Popen[bytes]
) -> None:
    make_bridge(api)
    vm = make_stopped_vm(api, "web")
    network = make_network(api)
    mac = api.get(f"/v1/vms/{vm['id']}").json()["nics"][0]["mac"]
    leases = settings.state_dir / "networks" / network["id"] / "dnsmasq.leases"
    good = f"4102444800 {mac} 10.91.0.2 web 01:{mac}\n"
    for kind in KINDS:
        damage(
            leases,
            kind,
            good.encode(),
            stranger.pid,
            lambda expiry: f"{expiry} {mac} 10.91.0.2 web *\n".encode(),
        )
        r = api.get("/v1/networks/nat0/leases")
        assert r.status_code == 200, (kind, r.text)
        shown = r.json()
        if kind == "zero":  # expiry 0: an infinite lease (dnsmasq's lease.c)
            assert [lease["ip"] for lease in shown] == ["10.91.0.2"], kind
        else:
            assert shown == [], (kind, shown)
        # dnsmasq starts again with it (one that is not a regular file is set aside): a new
        # domain restarts it
        pid = api.get("/v1/networks/nat0").json()["dnsmasq_pid"]
        r = api.patch("/v1/networks/nat0?wait=10", json={"domain": f"{kind}.test"})
        assert r.status_code == 200, (kind, r.text)
        now = r.json()
        assert now["status"] == "active" and now["dnsmasq_pid"] not in (None, pid), (kind, now)
    assert stranger.poll() is None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_admin_token_file_is_set_aside_and_replaced(
    kind: str, tmp_path: Path, stranger: subprocess.Popen[bytes]
) -> None:
    path = tmp_path / "state" / "admin-token"
    good = load_or_create_token(path)
    path.with_name("admin-token.bad").mkdir()  # left by an earlier repair: replaced too
    damage(path, kind, f"{good}\n".encode(), stranger.pid, lambda pid: f"{pid}\n".encode())
    token = load_or_create_token(path)
    # what is still a bearer token of 16 characters or more is kept (a client may use it)
    kept = {"truncated": good[: (len(good) + 1) // 2], "huge-number": "9" * 40}.get(kind)
    if kept is not None:
        assert token == kept
        return
    assert token != good and len(token) >= 32
    assert path.read_text() == f"{token}\n" and stat.S_IMODE(path.lstat().st_mode) == 0o600
    assert load_or_create_token(path) == token  # written once, then reused
    assert (
        path.with_name("admin-token.bad").exists() or path.with_name("admin-token.bad").is_symlink()
    )


@pytest.mark.timeout(60)  # a FIFO opened without O_NONBLOCK would hang the request
def test_a_planted_console_log_is_not_served(
    api: TestClient, settings: Settings, stranger: subprocess.Popen[bytes]
) -> None:
    """The VM's run directory belongs to the user qemu runs as: a console.log it replaced
    by a link to a file only root may read, or by a FIFO, must not be served."""
    make_bridge(api)
    vm = make_stopped_vm(api, "web")
    console = settings.run_dir / "vms" / vm["id"] / "console.log"
    console.parent.mkdir(parents=True, exist_ok=True)
    secret = settings.state_dir / "secret"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text("root only\n")
    secret.chmod(0o600)
    for kind in KINDS:
        damage(console, kind, b"booting\n", stranger.pid, lambda pid: f"{pid}\n".encode())
        if kind == "symlink":
            console.unlink()
            console.symlink_to(secret)
        r = api.get(f"/v1/vms/{vm['id']}/console")
        assert r.status_code == 200, (kind, r.text)
        assert "root only" not in r.text and len(r.content) <= 65536, kind


JOURNALS = {
    "not-an-object": "garbage",
    "a-list": [1, 2],
    "empty-object": {},
    "wrong-types": {"name": 5, "mac": [], "permanent_mac": None},
    "bad-address": {"name": "eth0", "mac": "02:00:00:00:00:01", "addresses": [{"bogus": 1}]},
}


@pytest.mark.parametrize("kind", JOURNALS)
def test_a_damaged_uplink_journal_stays_on_that_uplink(
    kind: str, api: TestClient, netns: str, lan: str, settings: Settings
) -> None:
    """The uplink journal (the NIC's saved configuration, kept in the database while a move
    is under way) damaged during a move: that uplink reports it, everything else works."""
    make_bridge(api, stp=False, forward_delay=0)
    assert uplink(api).status_code == 201
    db = Database(settings.db_url)
    try:
        with db.unit_of_work() as session:
            # past the CHECK constraints, as a hand edit or an older version would write it
            session.execute(text("PRAGMA ignore_check_constraints = ON"))
            session.execute(
                update(Uplink).values(saved=JOURNALS[kind], phase="moving"),
            )
    finally:
        db.dispose()
    api.app.state.supervisor.resync()  # type: ignore[attr-defined]

    def reported() -> bool:
        shown = api.get("/v1/bridges/br0/uplink").json()
        return shown["status"] == "error" and "uplink journal" in (shown["status_reason"] or "")

    assert _eventually(reported, 10), api.get("/v1/bridges/br0/uplink").json()
    assert api.get("/v1/bridges/br0").status_code == 200
    plan = api.delete("/v1/bridges/br0/uplink?dry_run=true")
    assert plan.status_code == 200 and "uplink journal" in plan.json()["refused"], plan.text
    other = make_bridge(api, "br1")  # other links still settle
    assert other["status"] == "active", other


@pytest.mark.timeout(120)  # a FIFO read without O_NONBLOCK would hang the network worker
@pytest.mark.parametrize("name", ["dnsmasq.conf", "dhcp-hosts", "dnsmasq.log"])
def test_a_damaged_dnsmasq_file_is_written_again_at_the_next_full_pass(
    name: str, api: TestClient, netns: str, settings: Settings, stranger: subprocess.Popen[bytes]
) -> None:
    """The files the daemon writes for dnsmasq are read back to compare them with what they
    should say (at a full pass); dnsmasq's log is opened again at each start."""
    make_bridge(api)
    network = make_network(api)
    path = run_dir(settings, network) / name
    good = path.read_bytes()
    worker = api.app.state.network_worker  # type: ignore[attr-defined]
    for kind in KINDS:
        damage(path, kind, good, stranger.pid, lambda pid: f"{pid}\n".encode())
        if name == "dnsmasq.log":  # a new domain restarts dnsmasq
            r = api.patch("/v1/networks/nat0?wait=10", json={"domain": f"{kind}.test"})
            assert r.status_code == 200, (kind, r.text)
        else:
            passes = worker.passes
            worker.resync()
            assert _eventually(lambda: worker.passes > passes + 1, 10), kind  # noqa: B023
            assert path.read_bytes() == good, kind
        now = api.get("/v1/networks/nat0").json()
        assert now["status"] == "active", (kind, now)
        assert dnsmasqs(netns) == [now["dnsmasq_pid"]], kind
    make_bridge(api, "br1")
    other = make_network(api, name="nat1", bridge="br1", subnet="10.92.0.0/24")
    assert other["status"] == "active", other
    assert stranger.poll() is None
