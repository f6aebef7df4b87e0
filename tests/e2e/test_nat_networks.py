"""Managed NAT networks end to end: the real daemon in a "host" namespace whose uplink is a
veth to an "outside" namespace, two real guests (DHCP only) on a managed network.

Proven from the far side: the guests get their fixed addresses from dnsmasq and resolve
names; a guest reaches a server outside, which sees the host's uplink address (SNAT); a client
outside reaches a guest through a port forward on the uplink address, and the other guest
through the same forward (hairpin); a long-lived connection through a forward survives changes
of other forwards; dnsmasq killed with SIGKILL comes back with its leases; a daemon killed
with SIGKILL and restarted adopts dnsmasq and the rules instead of duplicating them.

The world (two guest boots) is built once for the module; the tests run in file order.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from app.host.netns import enter_for_this_thread
from tests.e2e.helpers import E2EDaemon, ok, running_daemon, wait_for
from tests.guest.build import Guest, build_guest, kernel_cmdline
from tests.guest.console import parse_fetch, parse_hello, parse_ready, parse_resolved
from tests.netns_tools import in_namespace, in_netns, ip, nft_rules, processes_in, throwaway_netns

UPLINK = "172.31.250.1"  # the host's address towards the outside
OUTSIDE = "172.31.250.2"  # a server out there
SERVER_PORT = 8000
HELLO_PORT = 8080  # forwarded to the guest's hello service (7777)
ECHO_PORT = 9000  # forwarded to the guest's echo service
GUEST_ECHO = 7000


class LineServer:
    """A TCP server inside a namespace that answers each connection with one line naming the
    peer address it saw, and remembers the peers."""

    def __init__(self, netns: str, address: str, port: int) -> None:
        self.peers: list[str] = []
        ready = threading.Event()
        self._sock: socket.socket | None = None

        def run() -> None:
            enter_for_this_thread(netns)
            with socket.create_server((address, port)) as server:
                self._sock = server
                ready.set()
                while True:
                    try:
                        conn, (peer, _) = server.accept()
                    except OSError:
                        return
                    with conn:
                        self.peers.append(peer)
                        conn.sendall(f"OUTSIDE saw {peer}\n".encode())

        threading.Thread(target=run, daemon=True).start()
        assert ready.wait(5)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()


def connect_from(netns: str, address: str, port: int, timeout: float = 5.0) -> socket.socket:
    """A TCP connection opened inside `netns` (a socket stays in the namespace it was made in,
    so the caller may use it from any thread)."""
    return in_namespace(netns, lambda: socket.create_connection((address, port), timeout=timeout))


def first_line(netns: str, address: str, port: int) -> str | None:
    try:
        with connect_from(netns, address, port) as conn:
            return conn.makefile().readline().strip() or None
    except OSError:
        return None


def echo(conn: socket.socket, text: str) -> str:
    conn.sendall(f"{text}\n".encode())
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            raise ConnectionError("the echo connection was closed")
        data += chunk
    return data.decode().strip()


@dataclass
class World:
    host: str
    outside: str
    daemon: E2EDaemon
    server: LineServer
    network: dict[str, Any]
    vms: dict[str, dict[str, Any]] = field(default_factory=dict)

    def console(self, name: str) -> str:
        with self.daemon.client() as client:
            return str(client.get(f"/v1/vms/{self.vms[name]['id']}/console").text)

    def nic(self, name: str) -> dict[str, Any]:
        return dict(self.vms[name]["nics"][0])


def _vm(guest: Guest, name: str, cmdline: str) -> dict[str, Any]:
    return {
        "name": name,
        "memory_mib": 256,
        "boot": {"kernel": str(guest.kernel), "initrd": str(guest.initrd), "cmdline": cmdline},
        "nics": [{"backend": "bridge", "bridge": "br0"}],
    }


def _uplink(host: str, outside: str) -> None:
    ip(host, "link", "add", "uplink", "type", "veth", "peer", "name", "wan", "netns", outside)
    ip(host, "addr", "add", f"{UPLINK}/24", "dev", "uplink")
    ip(host, "link", "set", "uplink", "up")
    ip(outside, "addr", "add", f"{OUTSIDE}/24", "dev", "wan")
    ip(outside, "link", "set", "wan", "up")


@pytest.fixture(scope="module")
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    guest = build_guest("virtio")
    workdir = Path(tempfile.mkdtemp(prefix="kvt-", dir="/tmp"))  # short QMP socket paths
    workdir.chmod(0o755)
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        host = stack.enter_context(throwaway_netns())
        outside = stack.enter_context(throwaway_netns())
        _uplink(host, outside)
        server = LineServer(outside, OUTSIDE, SERVER_PORT)
        stack.callback(server.close)
        daemon = stack.enter_context(running_daemon(host, workdir, request))
        with daemon.client(timeout=60) as client:
            ok(client.post("/v1/bridges?wait=10", json={"name": "br0"}), 201)
            body = {"name": "nat0", "bridge": "br0", "subnet": "10.91.0.0/24", "domain": "kvm.test"}
            network = ok(client.post("/v1/networks?wait=10", json=body), 201)
            world = World(host, outside, daemon, server, network)
            web = kernel_cmdline(
                dhcp=True,
                echo=GUEST_ECHO,
                fetch=f"{OUTSIDE}:{SERVER_PORT}",
                resolve="web.kvm.test",
            )
            world.vms["web"] = ok(client.post("/v1/vms?wait=60", json=_vm(guest, "web", web)), 201)
            for port, target in ((HELLO_PORT, 7777), (ECHO_PORT, GUEST_ECHO)):
                forward = {
                    "network": "nat0",
                    "vm": "web",
                    "listen_address": UPLINK,
                    "port": port,
                    "target_port": target,
                }
                ok(client.post("/v1/port-forwards?wait=10", json=forward), 201)
            db = kernel_cmdline(dhcp=True, fetch=f"{UPLINK}:{HELLO_PORT}", resolve="web")
            world.vms["db"] = ok(client.post("/v1/vms?wait=60", json=_vm(guest, "db", db)), 201)
        yield world


def test_guests_get_fixed_addresses_by_dhcp_and_names_resolve(world: World) -> None:
    for name, expected in (("web", "10.91.0.2"), ("db", "10.91.0.3")):
        nic = world.nic(name)
        assert nic["ipv4"] == expected, nic
        ready = wait_for(lambda n=name: parse_ready(world.console(n)), 90, f"{name} ready")
        assert (ready.ip, ready.mac) == (f"{expected}/24", nic["mac"])
    assert wait_for(lambda: parse_resolved(world.console("web"), "web.kvm.test"), 60, "DNS") == (
        "10.91.0.2"
    )
    assert wait_for(lambda: parse_resolved(world.console("db"), "web"), 60, "DNS") == "10.91.0.2"
    with world.daemon.client() as client:
        leases = ok(client.get("/v1/networks/nat0/leases"), 200)
    assert {(x["mac"], x["ip"], x["fixed"]) for x in leases} == {
        (world.nic("web")["mac"], "10.91.0.2", True),
        (world.nic("db")["mac"], "10.91.0.3", True),
    }


def test_guest_reaches_the_outside_as_the_uplink_address(world: World) -> None:
    answer = wait_for(
        lambda: parse_fetch(world.console("web"), f"{OUTSIDE}:{SERVER_PORT}"), 120, "fetch"
    )
    assert answer == f"OUTSIDE saw {UPLINK}"  # SNAT, seen from the far side
    assert set(world.server.peers) == {UPLINK}


def test_port_forward_from_outside_and_hairpin_from_the_other_guest(world: World) -> None:
    line = wait_for(lambda: first_line(world.outside, UPLINK, HELLO_PORT), 30, "the forward")
    hello = parse_hello(line)
    assert hello is not None and hello.address == "10.91.0.2", line
    fetched = wait_for(
        lambda: parse_fetch(world.console("db"), f"{UPLINK}:{HELLO_PORT}"), 120, "hairpin"
    )
    hairpin = parse_hello(fetched)
    assert hairpin is not None and hairpin.mac == world.nic("web")["mac"], fetched


def test_long_lived_connection_survives_changes_of_other_forwards(world: World) -> None:
    with connect_from(world.outside, UPLINK, ECHO_PORT, timeout=10) as conn:
        assert echo(conn, "before") == "before"
        with world.daemon.client() as client:
            other = {"network": "nat0", "vm": "db", "port": 2200, "target_port": 22}
            created = ok(client.post("/v1/port-forwards?wait=10", json=other), 201)
            assert echo(conn, "after an add") == "after an add"
            batch = [{**other, "port": 3000 + i} for i in range(20)]
            ok(client.post("/v1/port-forwards/batch", json={"port_forwards": batch}), 202)
            wait_for(lambda: _all_active(client), 10, "the batch applied")
            assert echo(conn, "after a batch") == "after a batch"
            assert client.delete(f"/v1/port-forwards/{created['id']}?wait=10").status_code == 204
            assert echo(conn, "after a delete") == "after a delete"


def _all_active(client: Any) -> bool | None:
    items = ok(client.get("/v1/port-forwards?limit=100"), 200)["items"]
    return all(i["status"] == "active" for i in items) or None


def _dnsmasq_pids(world: World) -> list[int]:
    return [p for p in processes_in(world.host) if _comm(p) == "dnsmasq"]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def test_dnsmasq_killed_is_restarted_with_its_leases(world: World) -> None:
    with world.daemon.client() as client:
        pid = ok(client.get("/v1/networks/nat0"), 200)["dnsmasq_pid"]
        assert _dnsmasq_pids(world) == [pid]
        os.kill(pid, signal.SIGKILL)

        def restarted() -> dict[str, Any] | None:
            now: dict[str, Any] = ok(client.get("/v1/networks/nat0"), 200)
            fresh = now["dnsmasq_pid"] not in (None, pid) and now["status"] == "active"
            return now if fresh else None

        now = wait_for(restarted, 10, "dnsmasq restarted")
        assert now["restarts"] >= 1
        assert _dnsmasq_pids(world) == [now["dnsmasq_pid"]]
        leases = {x["ip"] for x in ok(client.get("/v1/networks/nat0/leases"), 200)}
        assert leases == {"10.91.0.2", "10.91.0.3"}
    assert first_line(world.outside, UPLINK, HELLO_PORT) is not None


def test_daemon_kill_9_and_restart_adopts_dnsmasq_and_rules(world: World) -> None:
    with world.daemon.client() as client:
        pid = ok(client.get("/v1/networks/nat0"), 200)["dnsmasq_pid"]
    rules = nft_rules(world.host) or []
    world.daemon.kill()  # SIGKILL: nothing is cleaned up
    stray = ["tcp", "dport", "1", "drop", "comment", '"forward stale"']
    in_netns(world.host, "nft", "add", "rule", "inet", "kvmnetd", "prerouting", *stray)
    world.daemon.start()
    with world.daemon.client() as client:
        network = wait_for(
            lambda: (n := ok(client.get("/v1/networks/nat0"), 200))["status"] == "active" and n,
            10,
            "the network after the restart",
        )
        assert network["dnsmasq_pid"] == pid
        assert _dnsmasq_pids(world) == [pid]
        after = wait_for(lambda: _without_stray(world), 10, "the stray rule removed")
        assert sorted(str(r.get("comment")) for r in after) == sorted(
            str(r.get("comment")) for r in rules
        )
        vms = ok(client.get("/v1/vms"), 200)["items"]
        assert {v["status"] for v in vms} == {"running"}
    line = wait_for(lambda: first_line(world.outside, UPLINK, HELLO_PORT), 10, "the forward")
    assert "10.91.0.2" in line


def _without_stray(world: World) -> list[dict[str, object]] | None:
    rules = nft_rules(world.host) or []
    return None if any(r.get("comment") == "forward stale" for r in rules) else rules


def test_the_howtos_routed_tap_as_a_managed_nat_network(world: World) -> None:
    """The how-to's tap1 (192.168.105.1/24, the guest's gateway) plus its SNAT step, managed:
    the guest gets its address by DHCP over the tap and reaches the outside as the uplink."""
    guest = build_guest("virtio")
    with world.daemon.client(timeout=120) as client:
        ok(client.post("/v1/taps?wait=10", json={"name": "tap1"}), 201)
        body = {"name": "routed", "tap": "tap1", "subnet": "192.168.105.0/24"}
        ok(client.post("/v1/networks?wait=10", json=body), 201)
        cmdline = kernel_cmdline(dhcp=True, fetch=f"{OUTSIDE}:{SERVER_PORT}")
        vm = _vm(guest, "routed", cmdline)
        vm["nics"] = [{"backend": "tap", "tap": "tap1"}]
        world.vms["routed"] = ok(client.post("/v1/vms?wait=60", json=vm), 201)
    ready = wait_for(lambda: parse_ready(world.console("routed")), 90, "the routed guest")
    assert ready.ip == "192.168.105.2/24"
    answer = wait_for(
        lambda: parse_fetch(world.console("routed"), f"{OUTSIDE}:{SERVER_PORT}"), 120, "fetch"
    )
    assert answer == f"OUTSIDE saw {UPLINK}"
