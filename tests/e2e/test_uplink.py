"""The how-to's bridged networking end to end: the real daemon in a "host" namespace whose
eth0 (a veth) leads to a "LAN" namespace with the gateway and a DHCP server (dnsmasq).

Proven: attaching eth0 to br0 while the LAN pings the host loses at most a few echoes, and
the host keeps reaching its gateway; two guests on br0 get leases from the LAN's DHCP server
and answer the LAN; the bridge's MAC table shows the LAN's MAC next to the guests'; detaching
returns the configuration to eth0 bit for bit; an unreachable probe rolls everything back;
a daemon killed with SIGKILL in the middle of a move ends, after its restart, restored.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import icmplib
import pytest

from app.host.netns import enter_for_this_thread
from tests.api.test_uplinks_api import reaches, read
from tests.e2e.helpers import E2EDaemon, ok, running_daemon, wait_for
from tests.e2e.test_nat_networks import first_line
from tests.guest.build import build_guest, kernel_cmdline
from tests.guest.console import parse_hello, parse_ready
from tests.netns_tools import ip, throwaway_netns

GATEWAY = "10.60.0.1"
HOST = "10.60.0.10"
POOL = ("10.60.0.100", "10.60.0.150")


class Pinger:
    """ICMP echoes from inside a namespace every `interval` seconds, counting the lost ones."""

    def __init__(self, netns: str, address: str, interval: float = 0.05) -> None:
        self.sent = self.lost = 0
        self._stop = threading.Event()

        def run() -> None:
            enter_for_this_thread(netns)
            while not self._stop.is_set():
                host = icmplib.ping(address, count=1, timeout=0.25, privileged=True)
                self.sent += 1
                self.lost += 0 if host.is_alive else 1
                time.sleep(interval)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self) -> tuple[int, int]:
        self._stop.set()
        self._thread.join(5)
        return self.sent, self.lost


@dataclass
class Lan:
    host: str
    lan: str
    daemon: E2EDaemon


@pytest.fixture
def world(request: pytest.FixtureRequest) -> Iterator[Lan]:
    workdir = Path(tempfile.mkdtemp(prefix="kvt-", dir="/tmp"))  # short QMP socket paths
    workdir.chmod(0o755)
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        host = stack.enter_context(throwaway_netns())
        lan = stack.enter_context(throwaway_netns())
        ip(host, "link", "add", "eth0", "type", "veth", "peer", "name", "lan0", "netns", lan)
        ip(lan, "addr", "add", f"{GATEWAY}/24", "dev", "lan0")
        ip(lan, "link", "set", "lan0", "up")
        ip(host, "addr", "add", f"{HOST}/24", "dev", "eth0")
        ip(host, "link", "set", "eth0", "up")
        ip(host, "route", "add", "default", "via", GATEWAY, "metric", "100")
        stack.enter_context(_dhcp_server(lan, workdir))
        daemon = stack.enter_context(running_daemon(host, workdir / "d", request))
        with daemon.client() as client:
            bridge = {"name": "br0", "stp": False, "forward_delay": 0}
            ok(client.post("/v1/bridges?wait=10", json=bridge), 201)
        yield Lan(host, lan, daemon)


@contextlib.contextmanager
def _dhcp_server(lan: str, workdir: Path) -> Iterator[None]:
    """The LAN's DHCP server: dnsmasq on lan0 (no DNS), stopped by pid."""
    argv = [
        "ip", "netns", "exec", lan, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
        "--port=0", "--interface=lan0", "--bind-interfaces", "--except-interface=lo",
        f"--dhcp-range={POOL[0]},{POOL[1]},255.255.255.0,600", f"--dhcp-option=3,{GATEWAY}",
        f"--dhcp-leasefile={workdir / 'lan.leases'}", f"--pid-file={workdir / 'lan.pid'}",
        "--log-facility=-", "--log-dhcp",
    ]  # fmt: skip
    log = workdir / "lan-dnsmasq.log"
    with log.open("wb") as out:
        server = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        yield  # its log (DHCP transactions) stays in the work dir while the test runs
    finally:
        server.kill()
        server.wait(10)


def _uplink(world: Lan, **body: Any) -> Any:
    with world.daemon.client(timeout=60) as client:
        return client.put("/v1/bridges/br0/uplink?wait=30", json={"interface": "eth0", **body})


def _vm(guest: Any, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "memory_mib": 256,
        "boot": {
            "kernel": str(guest.kernel),
            "initrd": str(guest.initrd),
            "cmdline": kernel_cmdline(dhcp=True),
        },
        "nics": [{"backend": "bridge", "bridge": "br0"}],
    }


def test_attach_under_ping_guests_on_the_lan_and_detach(world: Lan) -> None:
    before = read(world.host, "eth0")
    pinger = Pinger(world.lan, HOST)
    time.sleep(0.5)
    r = _uplink(world)
    time.sleep(0.5)
    sent, lost = pinger.stop()
    assert r.status_code == 201 and r.json()["status"] == "active", r.text
    print(f"echoes to the host during the move: {sent} sent every 50 ms, {lost} lost")
    assert sent >= 10 and lost <= 3, (sent, lost)
    bridge = read(world.host, "br0")
    assert [a[1] for a in bridge[2]] == [f"{HOST}/24"]
    assert (None, GATEWAY) in {(route[1], route[5]) for route in bridge[3]}  # default route
    assert reaches(world.host, GATEWAY)

    guest = build_guest("virtio")
    with world.daemon.client(timeout=120) as client:
        vms = [ok(client.post("/v1/vms?wait=60", json=_vm(guest, n)), 201) for n in ("vm1", "vm2")]
        addresses = []
        for vm in vms:
            text = lambda v=vm: client.get(f"/v1/vms/{v['id']}/console").text  # noqa: E731
            ready = wait_for(lambda t=text: parse_ready(t()), 90, f"{vm['name']} ready")
            lease = IPv4Address(ready.address)
            assert IPv4Address(POOL[0]) <= lease <= IPv4Address(POOL[1]), ready
            assert ready.mac == vm["nics"][0]["mac"]
            hello = parse_hello(
                wait_for(lambda a=ready.address: first_line(world.lan, a, 7777), 20, "hello")
            )
            assert hello is not None and hello.mac == ready.mac  # the LAN reaches the guest
            addresses.append(ready.address)
        assert len(set(addresses)) == 2
        fdb = ok(client.get("/v1/bridges/br0/fdb"), 200)
        learned = {e["mac"]: e["port"] for e in fdb if not e["is_local"]}
        lan_mac = read(world.lan, "lan0")[0]
        assert learned.get(lan_mac) == "eth0", fdb  # the LAN's MAC, behind the uplink
        for vm in vms:
            assert learned.get(vm["nics"][0]["mac"]) == vm["nics"][0]["tap_name"], fdb
        uplink = ok(client.get("/v1/bridges/br0/uplink"), 200)
        assert uplink["carrier"] is True and uplink["phase"] == "attached"

        assert client.delete("/v1/bridges/br0/uplink?wait=30").status_code == 204
    assert read(world.host, "eth0") == before
    assert reaches(world.lan, HOST)


def test_unreachable_probe_rolls_back_bit_for_bit(world: Lan) -> None:
    before, bridge_before = read(world.host, "eth0"), read(world.host, "br0")
    r = _uplink(world, probe_address="10.60.0.99", probe_timeout=1)
    assert r.json()["status"] == "error" and "rolled back" in r.json()["status_reason"], r.text
    assert read(world.host, "eth0") == before
    assert read(world.host, "br0")[2:] == bridge_before[2:]
    assert reaches(world.lan, HOST)


def test_daemon_killed_mid_move_ends_consistent(world: Lan) -> None:
    before, bridge_before = read(world.host, "eth0"), read(world.host, "br0")
    body = {"interface": "eth0", "probe_address": "10.60.0.99", "probe_timeout": 4}
    with world.daemon.client() as client:
        assert client.put("/v1/bridges/br0/uplink", json=body).status_code == 202

        def moving() -> bool | None:
            return ok(client.get("/v1/bridges/br0/uplink"), 200)["phase"] == "moving" or None

        wait_for(moving, 10, "the move to start")
    time.sleep(0.3)  # inside the probe: the configuration is on br0 now
    assert read(world.host, "eth0")[2] == []
    world.daemon.kill()
    world.daemon.start()
    with world.daemon.client() as client:

        def settled() -> dict[str, Any] | None:
            now: dict[str, Any] = ok(client.get("/v1/bridges/br0/uplink"), 200)
            return now if now["status"] in ("active", "error") else None

        uplink = wait_for(settled, 30, "the uplink after the restart")
    assert uplink["phase"] == "detached" and uplink["status"] == "error", uplink
    assert read(world.host, "eth0") == before
    assert read(world.host, "br0")[2:] == bridge_before[2:]
    assert reaches(world.lan, HOST)
