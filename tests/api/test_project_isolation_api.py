"""Two projects' managed networks on one host cannot reach each other through it (issue 11,
"two projects' guests on separate segments cannot reach each other"), on the real kernel of
a throwaway namespace with the in-process daemon. Each "guest" is a namespace wired to a
network's routed tap by tap_wire.py (as qemu holds a tap), so what it sends enters the tap as
a VM's frames would: project alpha has two networks, beta one."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from fastapi.testclient import TestClient

from app.db.models import Network, Tap
from app.domain.nat_rules import network_chain
from tests.api.test_networks_api import make_stopped_vm
from tests.kernel.nested.conftest import wired_guest
from tests.netns_tools import in_netns, ip
from tests.tenancy import make_project

PYTHON = [sys.executable, "-I", "-S"]
# a guest's published service: answers every connection with one line, until killed
SERVER = (
    "import socket\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', 80)); s.listen(8); print('ready', flush=True)\n"
    "while True:\n"
    "    c, _ = s.accept(); c.sendall(b'published\\n'); c.close()\n"
)
CLIENT = (
    "import socket, sys\n"
    "try:\n"
    "    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)\n"
    "    print(c.recv(64).decode().strip())\n"
    "except OSError as exc:\n"
    "    print(type(exc).__name__)\n"
)


def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def network(api: TestClient, name: str, tap: str, subnet: str) -> dict[str, Any]:
    r = api.post("/v1/taps?wait=10", json={"name": tap})
    assert r.status_code == 201, r.text
    body = {"name": name, "tap": tap, "subnet": subnet}
    r = api.post("/v1/networks?wait=10", json=body)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def move_to(api: TestClient, project_id: str, *networks: dict[str, Any]) -> None:
    """Until the API takes a project from a member's token (the `scope` work), the rows move
    into the project in one unit of work, as a member's creates would have placed them."""
    db = api.app.state.context.db  # type: ignore[attr-defined]
    with db.unit_of_work() as session:
        for item in networks:
            row = session.get(Network, item["id"])
            row.project_id = project_id
            tap = session.get(Tap, row.tap_id)
            tap.project_id = project_id


@contextmanager
def guest(netns: str, tap: str, address: str, gateway: str) -> Iterator[str]:
    with wired_guest(netns, tap) as ns:
        ip(ns, "addr", "add", f"{address}/24", "dev", "eth0")
        ip(ns, "route", "add", "default", "via", gateway)
        yield ns


def pings(ns: str, address: str, attempts: int = 5) -> bool:
    ping = ["busybox", "ping", "-c", "1", "-W", "1", address]
    return any(in_netns(ns, *ping, check=False).returncode == 0 for _ in range(attempts))


def fetch(ns: str, address: str, port: int) -> str:
    return in_netns(ns, *PYTHON, "-c", CLIENT, address, str(port)).stdout.strip()


def dropped(netns: str, network_id: str) -> int:
    """Packets the network's `isolate` rule dropped (its counter in our table)."""
    argv = ["nft", "-j", "list", "chain", "inet", "kvmnetd", network_chain(network_id)]
    items = json.loads(in_netns(netns, *argv).stdout)["nftables"]
    (rule,) = [i["rule"] for i in items if i.get("rule", {}).get("comment", "").startswith("iso")]
    (counter,) = [e["counter"] for e in rule["expr"] if "counter" in e]
    return int(counter["packets"])


def isolating(netns: str) -> bool:
    listed = in_netns(netns, "nft", "-j", "list", "table", "inet", "kvmnetd", check=False)
    return listed.returncode == 0 and '"networks"' in listed.stdout


def test_two_projects_guests_reach_their_own_project_and_published_forwards_only(
    api: TestClient, netns: str
) -> None:
    db = api.app.state.context.db  # type: ignore[attr-defined]
    alpha, beta = make_project(db, "alpha"), make_project(db, "beta")
    a1 = network(api, "a1", "tapa", "10.61.1.0/24")
    a2 = network(api, "a2", "tapc", "10.61.3.0/24")
    b1 = network(api, "b1", "tapb", "10.61.2.0/24")
    # b1's guest is the VM `web` (stopped: the wired namespace plays its NIC on tapb)
    make_stopped_vm(api, "web", backend="tap", tap="tapb", bridge=None, ipv4="10.61.2.2")
    r = api.post(
        "/v1/port-forwards?wait=10",
        json={"network": "b1", "vm": "web", "port": 8080, "target_port": 80},
    )
    assert r.status_code == 201, r.text
    assert api.get(f"/v1/networks/{a1['id']}").json()["isolation"] is None  # one project
    move_to(api, alpha, a1, a2)
    move_to(api, beta, b1)
    worker = api.app.state.network_worker  # type: ignore[attr-defined]
    worker.nudge()
    until(lambda: isolating(netns), 10, "the project rules")

    with ExitStack() as stack:
        a = stack.enter_context(guest(netns, "tapa", "10.61.1.10", "10.61.1.1"))
        c = stack.enter_context(guest(netns, "tapc", "10.61.3.10", "10.61.3.1"))
        b = stack.enter_context(guest(netns, "tapb", "10.61.2.2", "10.61.2.1"))
        server = subprocess.Popen(
            ["ip", "netns", "exec", b, *PYTHON, "-c", SERVER],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None
        stack.callback(server.stdout.close)
        stack.callback(server.wait, 30)
        stack.callback(server.kill)
        assert server.stdout.readline().strip() == "ready"

        # each guest reaches its own gateway (DHCP and DNS live there)
        assert pings(a, "10.61.1.1") and pings(b, "10.61.2.1") and pings(c, "10.61.3.1")
        # alpha's two networks still route to each other, gateways included
        assert pings(a, "10.61.3.10") and pings(c, "10.61.1.10") and pings(a, "10.61.3.1")
        # across projects: neither the guests nor the other project's gateway
        assert not pings(a, "10.61.2.2", attempts=2), "alpha reached beta's guest"
        assert not pings(b, "10.61.1.10", attempts=2), "beta reached alpha's guest"
        assert not pings(b, "10.61.3.10", attempts=2), "beta reached alpha's guest"
        assert not pings(a, "10.61.2.1", attempts=2), "alpha reached beta's gateway"
        assert fetch(a, "10.61.2.2", 80) == "TimeoutError", "alpha reached beta's service"
        # beta's published forward works through a host address, here alpha's own gateway
        assert fetch(a, "10.61.1.1", 8080) == "published"
        assert fetch(c, "10.61.3.1", 8080) == "published"
        # even through beta's gateway: prerouting's dnat comes before input would judge it
        assert fetch(a, "10.61.2.1", 8080) == "published"

        assert dropped(netns, a1["id"]) >= 3  # pings to beta's guest and gateway, SYNs
        assert dropped(netns, b1["id"]) >= 4
        assert dropped(netns, a2["id"]) == 0
        shown = api.get(f"/v1/networks/{b1['id']}").json()["isolation"]
        assert shown["dropped_packets"] == dropped(netns, b1["id"]) and shown["dropped_bytes"]
        shown = api.get(f"/v1/networks/{a2['id']}").json()["isolation"]
        assert shown == {"dropped_packets": 0, "dropped_bytes": 0}
        assert api.get("/v1/networks").json()["items"][0]["isolation"] is None  # GET only

        # full passes find no drift in what a counter counted: the table stays loaded (a
        # reload would reset the counters)
        full_pass(worker)  # takes the live table as the reference, if not yet done
        counted = dropped(netns, a1["id"])
        assert not pings(a, "10.61.2.2", attempts=1)
        full_pass(worker)
        assert dropped(netns, a1["id"]) == counted + 1

        # chains of ours flushed by hand are drift: the next full pass loads the table again
        # (both: the echo request leaves through a1's chain, its reply through b1's)
        for flushed in (a1, b1):
            chain = network_chain(flushed["id"])
            in_netns(netns, "nft", "flush", "chain", "inet", "kvmnetd", chain)
        assert pings(a, "10.61.2.2"), "the flush opened the way: the rules were what held it"
        full_pass(worker)
        assert not pings(a, "10.61.2.2", attempts=2), "the flushed chain was not restored"
        assert dropped(netns, a1["id"]) == 2  # counting anew since the reload


def full_pass(worker: Any) -> None:
    passes = worker.passes
    worker.resync()
    until(lambda: worker.passes >= passes + 2, 10, "a full pass")
