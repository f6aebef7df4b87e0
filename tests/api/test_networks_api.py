"""Managed networks and port forwards through the API, checked on the real kernel of a fresh
namespace: the gateway on the bridge, our nftables table, IP forwarding, a live dnsmasq
answering DNS for the VMs' fixed addresses. The VMs stay powered off (no guest boots here)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.api.test_links_api import make_bridge
from tests.netns_tools import dns_query, in_netns, links, nft_rules, processes_in, sysctl

PROBLEM = "application/problem+json"


def make_network(api: TestClient, **body: Any) -> dict[str, Any]:
    payload = {"name": "nat0", "bridge": "br0", "subnet": "10.91.0.0/24", **body}
    r = api.post("/v1/networks?wait=10", json=payload)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def make_stopped_vm(api: TestClient, name: str, **nic: Any) -> dict[str, Any]:
    body = {
        "name": name,
        "power_state": "stopped",
        "boot": {"kernel": "/nonexistent"},
        "nics": [{"backend": "bridge", "bridge": "br0", **nic}],
    }
    r = api.post("/v1/vms?wait=10", json=body)
    assert r.status_code in (200, 201, 202), r.text
    return r.json()  # type: ignore[no-any-return]


def comments(ns: str) -> list[str]:
    return [str(rule.get("comment")) for rule in nft_rules(ns) or []]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_network_puts_gateway_rules_and_dnsmasq_in_place(
    api: TestClient, netns: str, settings: Settings
) -> None:
    make_bridge(api)
    web = make_stopped_vm(api, "web")
    network = make_network(api, domain="kvm.test")
    assert network["status"] == "active", network
    assert network["gateway"] == "10.91.0.1"
    assert network["dhcp"]["range_start"] == "10.91.0.128"
    assert "10.91.0.1/24" in links(netns)["br0"].addresses
    assert sysctl(netns, "net.ipv4.ip_forward") == "1"
    assert comments(netns) == [f"hairpin {network['id']}", f"nat {network['id']}"]
    pid = network["dnsmasq_pid"]
    assert pid and alive(pid)

    # the VM that was on the bridge already got the lowest fixed address; its name resolves
    nic = api.get(f"/v1/vms/{web['id']}").json()["nics"][0]
    assert (nic["network_id"], nic["ipv4"]) == (network["id"], "10.91.0.2")
    assert dns_query(netns, "10.91.0.1", "web.kvm.test") == "10.91.0.2"

    # a new VM gets the next address, served without restarting dnsmasq
    db = make_stopped_vm(api, "db", ipv4="10.91.0.50")
    assert api.get(f"/v1/vms/{db['id']}").json()["nics"][0]["ipv4"] == "10.91.0.50"
    assert _eventually(lambda: dns_query(netns, "10.91.0.1", "db") == "10.91.0.50")
    assert api.get(f"/v1/networks/{network['id']}").json()["dnsmasq_pid"] == pid

    # a port forward to web, then its removal
    r = api.post(
        "/v1/port-forwards?wait=10",
        json={"network": "nat0", "vm": "web", "port": 8080, "target_port": 80},
    )
    assert r.status_code == 201, r.text
    forward = r.json()
    assert forward["name"] == "tcp-any-8080"
    assert (forward["target_address"], forward["status"]) == ("10.91.0.2", "active")
    assert comments(netns).count(f"forward {forward['id']}") == 2  # prerouting and output
    assert api.delete(f"/v1/port-forwards/{forward['id']}?wait=10").status_code == 204
    assert f"forward {forward['id']}" not in comments(netns)

    # deleting the network (after its VMs' forwards; forced past their fixed addresses)
    # takes everything of it away
    assert api.delete("/v1/networks/nat0?wait=10&force=true").status_code == 204
    assert nft_rules(netns) is None
    assert not alive(pid)
    assert "10.91.0.1/24" not in links(netns)["br0"].addresses
    assert not (settings.run_dir / "networks" / network["id"]).exists()
    assert api.get(f"/v1/vms/{web['id']}").json()["nics"][0]["ipv4"] is None


def test_bad_network_and_forward_input_is_refused_and_changes_nothing(
    api: TestClient, netns: str
) -> None:
    make_bridge(api)
    make_bridge(api, "br1")
    make_stopped_vm(api, "web")
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"subnet": "10.91.0.1/24"}, 422, "CIDR"),
        ({"subnet": "10.91.0.0/24", "gateway": "10.92.0.1"}, 422, "outside the subnet"),
        (
            {
                "subnet": "10.91.0.0/24",
                "dhcp": {"range_start": "10.91.1.10", "range_end": "10.91.1.20"},
            },
            422,
            "outside the subnet",
        ),
        (
            {
                "subnet": "10.91.0.0/24",
                "dhcp": {"range_start": "10.91.0.1", "range_end": "10.91.0.9"},
            },
            422,
            "gateway",
        ),
        ({"subnet": "8.8.8.0/24"}, 422, "private"),
        ({"subnet": "10.91.0.0/30"}, 422, "too small"),
        ({"subnet": "10.91.0.0/24", "bridge": "nope"}, 404, "nope"),
        ({"subnet": "10.91.0.0/24", "tap": "x"}, 422, "exactly one"),
    ]
    for body, status, words in cases:
        r = api.post("/v1/networks", json={"name": "n", "bridge": "br0", **body})
        assert (r.status_code, r.headers["content-type"]) == (status, PROBLEM), (body, r.text)
        assert words in r.json()["detail"] or words in str(r.json().get("errors")), r.text
    assert api.get("/v1/networks").json()["items"] == []
    assert nft_rules(netns) is None

    make_network(api)
    r = api.post("/v1/networks", json={"name": "n2", "bridge": "br1", "subnet": "10.91.0.128/25"})
    assert r.status_code == 409 and "overlaps" in r.json()["detail"], r.text
    r = api.delete("/v1/bridges/br0")
    assert r.status_code == 409 and "network nat0" in r.json()["detail"], r.text

    before = comments(netns)
    forward = {"network": "nat0", "vm": "web", "port": 8080}
    for change, status, words in [
        ({"port": 0}, 422, "outside 1-65535"),
        ({"port": 70000}, 422, "outside 1-65535"),
        ({"port": 8000, "end_port": 7000}, 422, "below"),
        ({"port": 8000, "end_port": 8010, "target_port": 9000}, 422, "same port numbers"),
        ({"vm": "nobody"}, 404, "no VM"),
        ({"network": "nope"}, 404, "no network"),
        ({"nic": 3}, 422, "not on network"),
        ({"listen_address": "224.0.0.1"}, 422, "unicast"),
    ]:
        r = api.post("/v1/port-forwards", json={**forward, **change})
        assert (r.status_code, r.headers["content-type"]) == (status, PROBLEM), (change, r.text)
        assert words in r.json()["detail"], r.text
    # a VM off the network
    r = api.post(
        "/v1/vms",
        json={
            "name": "lone",
            "power_state": "stopped",
            "boot": {"kernel": "/nonexistent"},
            "nics": [{"backend": "bridge", "bridge": "br1"}],
        },
    )
    assert r.status_code == 202, r.text
    r = api.post("/v1/port-forwards", json={**forward, "vm": "lone"})
    assert r.status_code == 422 and "has no NIC on network" in r.json()["detail"], r.text

    # clashes: with a forward, with a range, with a VM's user-networking forward
    assert api.post("/v1/port-forwards?wait=10", json=forward).status_code == 201
    for change in ({}, {"listen_address": "10.0.0.1"}, {"port": 8075, "end_port": 8085}):
        r = api.post("/v1/port-forwards", json={**forward, **change, "name": "again"})
        assert r.status_code == 409 and "clashes" in r.json()["detail"], r.text
    r = api.post(
        "/v1/vms",
        json={
            "name": "usernet",
            "power_state": "stopped",
            "boot": {"kernel": "/nonexistent"},
            "nics": [
                {
                    "backend": "user",
                    "user": {
                        "forwards": [
                            {"host_address": "0.0.0.0", "host_port": 8080, "guest_port": 22}
                        ]
                    },
                }
            ],
        },
    )
    assert r.status_code == 409 and "clashes" in r.json()["detail"], r.text
    # a batch with one bad item applies nothing
    items = [{**forward, "port": 9000 + i} for i in range(5)] + [{**forward, "port": 0}]
    r = api.post("/v1/port-forwards/batch", json={"port_forwards": items})
    assert r.status_code == 422 and r.json()["index"] == 5, r.text
    assert len(api.get("/v1/port-forwards").json()["items"]) == 1
    assert len(comments(netns)) == len(before) + 2


def _eventually(check: Any, timeout: float = 5.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return bool(check())


def test_leases_file_is_read_for_the_api(api: TestClient, settings: Settings) -> None:
    make_bridge(api)
    vm = make_stopped_vm(api, "web")
    network = make_network(api)
    mac = api.get(f"/v1/vms/{vm['id']}").json()["nics"][0]["mac"]
    leases = Path(settings.state_dir / "networks" / network["id"] / "dnsmasq.leases")
    leases.write_text(
        f"4102444800 {mac} 10.91.0.2 web 01:{mac}\n1 02:00:00:00:00:09 10.91.0.200 old *\n"
    )
    r = api.get("/v1/networks/nat0/leases")
    assert r.status_code == 200, r.text
    assert r.json() == [
        {
            "mac": mac,
            "ip": "10.91.0.2",
            "hostname": "web",
            "expires_at": "2100-01-01T00:00:00Z",
            "vm_id": vm["id"],
            "fixed": True,
        }
    ]


def test_dnsmasq_killed_is_restarted_and_keeps_its_leases(
    api: TestClient, netns: str, settings: Settings
) -> None:
    make_bridge(api)
    vm = make_stopped_vm(api, "web")
    network = make_network(api)
    mac = api.get(f"/v1/vms/{vm['id']}").json()["nics"][0]["mac"]
    lease = f"4102444800 {mac} 10.91.0.2 web 01:{mac}\n"
    (settings.state_dir / "networks" / network["id"] / "dnsmasq.leases").write_text(lease)
    pid = network["dnsmasq_pid"]
    os.kill(pid, signal.SIGKILL)

    def restarted() -> dict[str, Any] | None:
        now = api.get("/v1/networks/nat0").json()
        return now if now["dnsmasq_pid"] not in (None, pid) and now["status"] == "active" else None

    assert _eventually(restarted), api.get("/v1/networks/nat0").json()
    now = restarted()
    assert now is not None and now["restarts"] == 1
    assert alive(now["dnsmasq_pid"])
    assert [x["ip"] for x in api.get("/v1/networks/nat0/leases").json()] == ["10.91.0.2"]
    assert dns_query(netns, "10.91.0.1", "web") == "10.91.0.2"


def test_restarted_daemon_adopts_dnsmasq_and_rules_and_drops_stray_rules(
    netns: str, settings: Settings
) -> None:
    first = create_app(settings, token="t", host_netns=netns)
    with TestClient(first, base_url="http://kvmnetd") as api:
        make_bridge(api)
        make_stopped_vm(api, "web")
        network = make_network(api)
        body = {"network": "nat0", "vm": "web", "port": 2222}
        assert api.post("/v1/port-forwards?wait=10", json=body).status_code == 201
        count = len(nft_rules(netns) or [])

    # a rule of ours the database does not want, added while no daemon runs
    stray = ["tcp", "dport", "1", "drop", "comment", '"forward stale"']
    in_netns(netns, "nft", "add", "rule", "inet", "kvmnetd", "prerouting", *stray)
    again = create_app(settings, token="t", host_netns=netns)
    with TestClient(again, base_url="http://kvmnetd") as api:
        assert again.state.network_worker.ready.wait(10)
        now = api.get("/v1/networks/nat0").json()
        assert now["dnsmasq_pid"] == network["dnsmasq_pid"]  # adopted, not a second one
        assert now["status"] == "active"
        rules = nft_rules(netns) or []
        assert "forward stale" not in [r.get("comment") for r in rules]
        assert len(rules) == count  # reloaded once, nothing duplicated
        assert [_comm(p) for p in processes_in(netns)].count("dnsmasq") == 1


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def test_changes_in_place_vm_deletion_diagnostics_and_log(api: TestClient, netns: str) -> None:
    make_bridge(api)
    vm = make_stopped_vm(api, "web")
    network = make_network(api)
    pid = network["dnsmasq_pid"]
    r = api.post("/v1/port-forwards?wait=10", json={"network": "nat0", "vm": "web", "port": 2222})
    forward = r.json()

    # NAT out of one interface with a fixed source address
    change = {"nat": {"out_interface": "uplink", "snat_address": "192.0.2.7"}}
    r = api.patch("/v1/networks/nat0?wait=10", json=change)
    assert r.status_code == 200 and r.json()["nat"]["snat_address"] == "192.0.2.7", r.text
    nat_rule = next(x for x in nft_rules(netns) or [] if x["comment"] == f"nat {network['id']}")
    assert {"snat": {"family": "ip", "addr": "192.0.2.7"}} in nat_rule["expr"]  # type: ignore[operator]
    assert r.json()["dnsmasq_pid"] == pid  # NAT is not dnsmasq's business
    # NAT off: no masquerade, the hairpin stays
    r = api.patch("/v1/networks/nat0?wait=10", json={"nat": {"enabled": False}})
    assert r.status_code == 200, r.text
    assert comments(netns).count(f"nat {network['id']}") == 0
    assert f"hairpin {network['id']}" in comments(netns)
    # a new lease time restarts dnsmasq
    r = api.patch("/v1/networks/nat0?wait=10", json={"dhcp": {"lease_time": 600}})
    assert r.status_code == 200 and r.json()["dnsmasq_pid"] not in (None, pid), r.text
    assert "lease time 10m" in api.get("/v1/networks/nat0/log").text
    assert api.patch("/v1/networks/nat0", json={"dhcp": {"lease_time": 600}}).status_code == 200

    diagnostics = {c["name"]: c for c in api.get("/v1/host/diagnostics").json()}
    assert diagnostics["ip_forwarding"]["ok"] is True
    assert diagnostics["port53"]["ok"] is True, diagnostics["port53"]  # our own dnsmasq
    assert diagnostics["dnsmasq"]["ok"] is True

    # a fixed address needs a managed network; a VM deleted with force takes its forwards
    r = api.post(
        "/v1/vms",
        json={
            "name": "x",
            "power_state": "stopped",
            "boot": {"kernel": "/nonexistent"},
            "nics": [{"backend": "user", "ipv4": "10.0.2.15"}],
        },
    )
    assert r.status_code == 422 and "managed network" in r.json()["detail"], r.text
    assert api.delete(f"/v1/vms/{vm['id']}?wait=10").status_code == 409  # forwards use it
    assert api.delete(f"/v1/vms/{vm['id']}?wait=10&force=true").status_code == 204
    assert api.get(f"/v1/port-forwards/{forward['id']}").status_code == 404
    assert _eventually(lambda: not any(c.startswith("forward") for c in comments(netns)))


def test_network_on_a_routed_tap_and_quick_successive_deletes(api: TestClient, netns: str) -> None:
    r = api.post("/v1/taps?wait=10", json={"name": "tap1"})
    assert r.status_code == 201, r.text
    body = {
        "name": "routed",
        "tap": "tap1",
        "subnet": "192.168.105.0/24",
        "nat": {"enabled": False},
    }
    r = api.post("/v1/networks?wait=10", json=body)
    assert r.status_code == 201, r.text
    network = r.json()
    assert (network["link"], network["status"]) == ("tap1", "active")
    assert "192.168.105.1/24" in links(netns)["tap1"].addresses
    assert comments(netns) == [f"hairpin {network['id']}"]  # no masquerade with NAT off
    # forwards, network and link deleted at once, without waiting: all of it goes
    make_stopped_vm(api, "web", backend="tap", tap="tap1", bridge=None)
    r = api.post("/v1/port-forwards", json={"network": "routed", "vm": "web", "port": 2222})
    assert r.status_code == 202, r.text
    assert api.delete(f"/v1/port-forwards/{r.json()['id']}").status_code == 202
    assert api.delete("/v1/networks/routed?force=true").status_code == 202  # web's address
    assert api.delete("/v1/vms/web").status_code == 202
    assert api.delete("/v1/taps/tap1").status_code == 202
    assert _eventually(lambda: "tap1" not in links(netns) and nft_rules(netns) is None)
    assert _eventually(lambda: api.get("/v1/networks").json()["items"] == [])


def test_a_port_53_clash_is_reported_and_heals(api: TestClient, netns: str) -> None:
    """Another resolver holding 0.0.0.0:53: dnsmasq cannot bind the gateway, the network says
    why (dnsmasq's own words) and diagnostics name the culprit; once it is gone, dnsmasq is
    started again by the backoff and the network becomes active."""
    squatter = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", SQUAT_53],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert squatter.stdout is not None and squatter.stdout.readline().strip() == b"bound"
        make_bridge(api)
        r = api.post(
            "/v1/networks?wait=10", json={"name": "nat0", "bridge": "br0", "subnet": "10.91.0.0/24"}
        )
        network = r.json()
        assert network["status"] == "error", network
        assert "Address already in use" in network["status_reason"], network
        checks = {c["name"]: c for c in api.get("/v1/host/diagnostics").json()}
        assert checks["port53"]["ok"] is False
        assert str(squatter.pid) in checks["port53"]["detail"] or any(
            c["pid"] == squatter.pid for c in checks["port53"]["data"]["clashes"]
        ), checks["port53"]
    finally:
        squatter.kill()
        squatter.wait(10)
        if squatter.stdout is not None:
            squatter.stdout.close()
    assert _eventually(lambda: api.get("/v1/networks/nat0").json()["status"] == "active", 40)
    assert dns_query(netns, "10.91.0.1", "nothing.invalid") is None  # it answers (NXDOMAIN)


SQUAT_53 = """
import socket, sys, time
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind(("0.0.0.0", 53))
tcp = socket.socket(); tcp.bind(("0.0.0.0", 53)); tcp.listen()
print("bound", flush=True)
time.sleep(600)
"""


def test_vm_names_are_host_names_and_no_vm_takes_anothers(api: TestClient, netns: str) -> None:
    """RFC 4343: host names are case-insensitive, so `Web` is refused next to `web` (it took
    web's DNS name before). A later VM named like an older VM's `-nic<n>` name gets its own
    name, and the older VM's NIC keeps it (before, the older VM lost its name)."""
    make_bridge(api)
    make_network(api)
    make_stopped_vm(api, "web", ipv4="10.91.0.10")
    r = api.post(
        "/v1/vms",
        json={"name": "Web", "power_state": "stopped", "boot": {"kernel": "/nonexistent"}},
    )
    assert r.status_code == 409 and r.headers["content-type"] == PROBLEM, r.text
    assert r.json()["type"].endswith("name-taken") and "'web'" in r.json()["detail"], r.text
    assert [vm["name"] for vm in api.get("/v1/vms").json()["items"]] == ["web"]

    make_stopped_vm(api, "db-nic1", ipv4="10.91.0.20")
    body = {
        "name": "db",
        "power_state": "stopped",
        "boot": {"kernel": "/nonexistent"},
        "nics": [
            {"backend": "bridge", "bridge": "br0", "ipv4": "10.91.0.30"},
            {"backend": "bridge", "bridge": "br0", "ipv4": "10.91.0.31"},
        ],
    }
    assert api.post("/v1/vms?wait=10", json=body).status_code in (200, 201, 202)
    assert _eventually(lambda: dns_query(netns, "10.91.0.1", "db") == "10.91.0.30")
    assert dns_query(netns, "10.91.0.1", "db-nic1") == "10.91.0.20"
    assert dns_query(netns, "10.91.0.1", "web") == "10.91.0.10"


def test_vm_names_that_are_no_host_names_are_refused_with_the_rule(api: TestClient) -> None:
    for name, why in [
        ("a" * 65, "65 characters; at most 15"),
        ("a" * 16, "16 characters; at most 15"),
        ("-h", "host name label"),
        ("h-", "host name label"),
        ("a.b_c", "host name label"),
    ]:
        body = {"name": name, "power_state": "stopped", "boot": {"kernel": "/nonexistent"}}
        r = api.post("/v1/vms", json=body)
        assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, r.text
        assert why in r.text, r.text
    assert api.get("/v1/vms").json()["items"] == []
