"""What the Neutron API costs a client (issue 12): ports made and listed through
openstacksdk and the `openstack` CLI against the same through the native API, one real
daemon over TCP in a throwaway kvt-* namespace, in the same run.

1. Creates: PORTS ports through openstacksdk (`conn.network.create_port(network_id=...,
   fixed_ips=[{subnet_id, ip_address}])`) against the same ports through `POST /v1/ports`
   (httpx, one client, the same name, bridge and fixed address), on a `local` network with a
   managed network. A third way, to split the SDK's own cost from the Neutron route's: a
   plain httpx `POST /networking/v2.0/ports` of the Neutron JSON. The three are interleaved
   in blocks of BLOCK (the order rotated each round; the daemon settled and the block's
   ports deleted between blocks). Printed per way: per-port mean, median and p95 (ms), total (s),
   the client's CPU per port (this thread's) and the daemon's CPU per port over the block's
   requests (/proc/PID/stat). Target: SDK <= 1.5x native.
2. Lists: with LISTED ports, `openstack port list --long` (the real CLI, a subprocess) wall
   time, against the same list through the SDK (`conn.network.ports()`), a plain GET of
   `/networking/v2.0/ports` and GET /v1/ports (every page of 100, and one page of 1000).
   The CLI's fixed cost is shown by the same command matching no port.

Run as root: `.venv/bin/python -m bench.neutron` (minutes: LISTED taps are made).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openstack
import openstack.config

from app.host.netns import call_in
from bench.taps import fresh_netns
from tests.daemon import Daemon
from tests.netns_tools import links

LISTEN = "127.0.0.1:8080"  # inside the namespace
BASE = f"http://{LISTEN}"
OPENSTACK = Path(sys.executable).with_name("openstack")
SUBNET = ipaddress.IPv4Network("10.20.0.0/21")  # 2045 addresses after the gateway
PORTS = 200
BLOCK = 50
LISTED = 1000
LIST_RUNS = 3
TARGET = 1.5
SETTLE_S = 600.0
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Lab:
    """The daemon, its tokens and the network the ports go on."""

    daemon: Daemon
    token: str
    bridge_id: str
    subnet_id: str
    workdir: Path
    ports: int = PORTS
    block: int = BLOCK
    listed: int = LISTED
    addresses: Iterator[str] = field(init=False)

    def __post_init__(self) -> None:
        self.addresses = (str(a) for a in list(SUBNET.hosts())[9:])

    def native(self) -> httpx.Client:
        """One httpx client over TCP, the admin token as Bearer."""
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.Client(base_url=BASE, headers=headers, timeout=120)

    def sdk(self) -> openstack.connection.Connection:
        """openstacksdk configured as the README's clouds.yaml (auth_type admin_token)."""
        clouds = self.workdir / "clouds.yaml"
        clouds.write_text(
            "clouds:\n  kvmnetd:\n    auth_type: admin_token\n"
            f"    auth:\n      token: {self.token}\n      endpoint: {BASE}/networking\n"
        )
        config = openstack.config.OpenStackConfig(config_files=[str(clouds)])
        return openstack.connection.Connection(config=config.get_one(cloud="kvmnetd"))


def daemon_cpu_s(daemon: Daemon) -> float:
    """The daemon process's user + system CPU so far, seconds (proc(5): stat fields 14, 15)."""
    assert daemon.proc is not None
    fields = Path(f"/proc/{daemon.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def checked(answer: httpx.Response, *codes: int) -> Any:
    if answer.status_code not in codes:
        raise RuntimeError(f"{answer.request.method} {answer.request.url}: {answer.text}")
    return answer.json() if answer.content else None


# ---- settling: the daemon's tap work done before the next block --------------------------------


def taps_in(netns: str) -> int:
    return sum(
        1 for name, link in links(netns).items() if name.startswith("tap") and link.kind == "tun"
    )


def settle(lab: Lab, client: httpx.Client, taps: int) -> None:
    """Until the kernel holds exactly `taps` port taps and every port is settled."""
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        if taps_in(lab.daemon.netns) == taps and not pending(client):
            return
        time.sleep(0.2)
    raise TimeoutError(f"ports not settled at {taps} taps after {SETTLE_S} s")


def native_ports(client: httpx.Client, limit: int = 100) -> list[dict[str, Any]]:
    """Every port through GET /v1/ports, page by page."""
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": limit} | ({"cursor": cursor} if cursor else {})
        body = checked(client.get("/v1/ports", params=params), 200)
        rows += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return rows


def pending(client: httpx.Client) -> bool:
    """Whether a port is still being made or deleted (one in error stops the bench)."""
    statuses = {row["status"] for row in native_ports(client)}
    if "error" in statuses:
        raise RuntimeError("a port is in error: see the daemon log")
    return bool(statuses & {"pending", "deleting"})


def delete_all(lab: Lab, client: httpx.Client) -> None:
    for row in native_ports(client):
        checked(client.delete(f"/v1/ports/{row['id']}"), 202, 204)
    settle(lab, client, 0)


# ---- 1. creates ---------------------------------------------------------------------------------

Create = Callable[[str, str], str]  # (name, address) -> the new port's id


def by_native(lab: Lab, client: httpx.Client) -> Create:
    def create(name: str, address: str) -> str:
        body = {"name": name, "bridge": lab.bridge_id, "ipv4": address}
        return str(checked(client.post("/v1/ports", json=body), 201, 202)["id"])

    return create


def by_neutron_http(lab: Lab, client: httpx.Client) -> Create:
    headers = {"X-Auth-Token": lab.token}

    def create(name: str, address: str) -> str:
        fixed = [{"subnet_id": lab.subnet_id, "ip_address": address}]
        port = {"name": name, "network_id": lab.bridge_id, "fixed_ips": fixed}
        answer = client.post("/networking/v2.0/ports", json={"port": port}, headers=headers)
        return str(checked(answer, 201)["port"]["id"])

    return create


def by_sdk(lab: Lab, conn: openstack.connection.Connection) -> Create:
    def create(name: str, address: str) -> str:
        fixed = [{"subnet_id": lab.subnet_id, "ip_address": address}]
        port = conn.network.create_port(network_id=lab.bridge_id, name=name, fixed_ips=fixed)
        return str(port.id)

    return create


@dataclass
class Way:
    label: str
    tag: str  # the ports' name prefix
    create: Create
    walls: list[float] = field(default_factory=list)
    client_cpu: float = 0.0
    daemon_cpu: float = 0.0

    def block(self, lab: Lab, count: int) -> None:
        """`count` creates, each timed; this thread's and the daemon's CPU over the block."""
        cpu, server = time.thread_time(), daemon_cpu_s(lab.daemon)
        for _ in range(count):
            name = f"{self.tag}{len(self.walls):04d}"
            began = time.perf_counter()
            self.create(name, next(lab.addresses))
            self.walls.append(time.perf_counter() - began)
        self.client_cpu += time.thread_time() - cpu
        self.daemon_cpu += daemon_cpu_s(lab.daemon) - server

    def mean(self) -> float:
        return statistics.fmean(self.walls)

    def line(self) -> str:
        n = len(self.walls)
        p95 = statistics.quantiles(self.walls, n=20)[18]
        return (
            f"  {self.label:<30} mean {self.mean() * 1e3:7.2f} ms   median "
            f"{statistics.median(self.walls) * 1e3:7.2f} ms   p95 {p95 * 1e3:7.2f} ms   "
            f"total {sum(self.walls):6.2f} s   client CPU {self.client_cpu / n * 1e3:6.2f} ms"
            f"/port   daemon CPU {self.daemon_cpu / n * 1e3:6.2f} ms/port"
        )


def creates(lab: Lab, client: httpx.Client, conn: openstack.connection.Connection) -> None:
    ways = [
        Way("openstacksdk create_port", "sdk", by_sdk(lab, conn)),
        Way("POST /v1/ports (native)", "v1-", by_native(lab, client)),
        Way("POST /networking (httpx)", "neu", by_neutron_http(lab, client)),
    ]
    for way in ways:  # warm-up: the SDK's first request, the routes' first use
        way.create(f"warm-{way.tag}", next(lab.addresses))
    settle(lab, client, len(ways))
    delete_all(lab, client)
    for r in range(lab.ports // lab.block):
        for way in ways[r % 3 :] + ways[: r % 3]:
            way.block(lab, lab.block)
            settle(lab, client, lab.block)
            delete_all(lab, client)
    sdk, native, plain = ways
    print(f"1. {lab.ports} ports each way, interleaved blocks of {lab.block}, one client:")
    for way in ways:
        print(way.line())
    ratio = sdk.mean() / native.mean()
    print(
        f"  SDK/native {ratio:.2f}x ({'met' if ratio <= TARGET else 'MISSED'}, target <= "
        f"{TARGET}x); Neutron route (httpx)/native {plain.mean() / native.mean():.2f}x; "
        f"SDK/Neutron route (httpx) {sdk.mean() / plain.mean():.2f}x; medians: SDK/native "
        f"{statistics.median(sdk.walls) / statistics.median(native.walls):.2f}x"
    )


# ---- 2. lists -----------------------------------------------------------------------------------


def cli(lab: Lab, *args: str) -> Any:
    """`openstack --os-token T --os-endpoint .../networking ARGS -f json` in the namespace."""
    argv = ["ip", "netns", "exec", lab.daemon.netns, str(OPENSTACK), "--os-token", lab.token]
    argv += ["--os-endpoint", f"{BASE}/networking", *args, "-f", "json"]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}
    done = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600, env=env
    )
    if done.returncode != 0:
        raise RuntimeError(f"{args}: {done.stderr}")
    return json.loads(done.stdout)


def median_of(fn: Callable[[], int], runs: int = LIST_RUNS) -> tuple[float, int]:
    """The median wall time of `runs` calls, seconds, and the rows the last one returned."""
    times, rows = [], 0
    for _ in range(runs):
        began = time.perf_counter()
        rows = fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times), rows


def lists(lab: Lab, client: httpx.Client, conn: openstack.connection.Connection) -> None:
    make = by_native(lab, client)
    began = time.perf_counter()
    for i in range(lab.listed):
        make(f"l{i:04d}", next(lab.addresses))
    made = time.perf_counter() - began
    settle(lab, client, lab.listed)
    print(
        f"2. {lab.listed} ports (made natively in {made:.1f} s, then settled); "
        f"medians of {LIST_RUNS}:"
    )
    neutron = {"X-Auth-Token": lab.token}
    figures = {
        "openstack port list --long (CLI)": lambda: len(cli(lab, "port", "list", "--long")),
        "the same CLI, matching no port": lambda: len(
            cli(lab, "port", "list", "--long", "--name", "nosuch")
        ),
        "openstacksdk conn.network.ports()": lambda: sum(1 for _ in conn.network.ports()),
        "GET /networking/v2.0/ports (httpx)": lambda: len(
            checked(client.get("/networking/v2.0/ports", headers=neutron), 200)["ports"]
        ),
        "GET /v1/ports, every page of 100": lambda: len(native_ports(client)),
        "GET /v1/ports?limit=1000, one page": lambda: len(native_ports(client, 1000)),
    }
    measured = {label: median_of(fn) for label, fn in figures.items()}
    base = measured["GET /v1/ports, every page of 100"][0]
    for label, (wall, rows) in measured.items():
        print(f"  {label:<36} {wall * 1e3:9.1f} ms  {rows:5d} rows  {wall / base:6.2f}x native")


# ---- the run ------------------------------------------------------------------------------------


def setup(daemon: Daemon, workdir: Path, sizes: argparse.Namespace) -> Lab:
    """A bridge (a `local` Neutron network) and its managed network, natively."""
    token = daemon.state_dir.joinpath("admin-token").read_text().strip()
    with daemon.client() as http:
        bridge = checked(http.post("/v1/bridges?wait=30", json={"name": "lan1"}), 201)
        body = {"name": "lan1net", "bridge": "lan1", "subnet": str(SUBNET)}
        network = checked(http.post("/v1/networks?wait=30", json=body), 201)
    ids = str(bridge["id"]), str(network["id"])
    return Lab(daemon, token, *ids, workdir, sizes.ports, sizes.block, sizes.listed)


def measure(lab: Lab) -> None:
    """Both parts, on this thread (which entered the namespace: the clients' sockets)."""
    conn = lab.sdk()
    with lab.native() as client:
        creates(lab, client, conn)
        lists(lab, client, conn)


def run(workdir: Path, sizes: argparse.Namespace) -> None:
    with fresh_netns() as netns:
        daemon = Daemon(netns, workdir)
        daemon.extra_env = {"KVMNETD_LISTEN": LISTEN}
        daemon.start()
        try:
            lab = setup(daemon, workdir, sizes)
            call_in(netns, lambda: measure(lab))
        except BaseException:
            print(f"--- daemon log ---\n{daemon.logs()[-5000:]}")
            raise
        finally:
            daemon.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ports", type=int, default=PORTS, help="creates per way")
    parser.add_argument("--block", type=int, default=BLOCK, help="creates per block")
    parser.add_argument("--listed", type=int, default=LISTED, help="ports listed in part 2")
    sizes = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kvt-bench-neutron-") as workdir:
        run(Path(workdir), sizes)


if __name__ == "__main__":
    main()
