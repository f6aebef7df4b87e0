"""Addresses that cannot collide, on the real kernel of a fresh namespace with a real dnsmasq
and a real DHCP client (busybox udhcpc in a namespace of its own, cabled to the network's
bridge by a veth):

- a fixed address leased to another MAC is refused (409 naming the holder); one inside the
  DHCP range is fine (dnsmasq never hands out a dhcp-host's address), and so is a DHCP
  range PATCHed over fixed addresses, while a fixed address another NIC holds is refused;
- the leases view says `fixed` only for a NIC's own fixed address;
- a NIC whose MAC holds another address is reported on the NIC and its port forwards are
  withheld until it renews;
- an address put on a bridge or tap that a network's gateway or subnet, a NIC's fixed
  address, another of our links or a foreign interface already holds is refused (409 naming
  the holder), and so is a network whose subnet holds another link's address;
- a tap that carries a routed network cannot join a bridge (409 in-use naming the network);
- a subnet used by an interface that is not ours is refused (409 naming interface and
  prefix), and one that appears later is reported on the network and in diagnostics at the
  next full pass.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.db.models import VmNic
from app.main import create_app
from app.settings import Settings
from tests.api.test_links_api import make_bridge, make_tap
from tests.api.test_networks_api import comments, make_network, make_stopped_vm
from tests.netns_tools import in_netns, ip, links, throwaway_netns

PROBLEM = "application/problem+json"
FULL_PASS = 0.5  # seconds between full passes where a test waits for one


def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.05)
    return check()


@pytest.fixture
def quick_api(netns: str, settings: Settings) -> Iterator[TestClient]:
    """The app with a full pass every FULL_PASS seconds."""
    quick = settings.model_copy(update={"reconcile_interval": FULL_PASS})
    app = create_app(quick, token="test-token", host_netns=netns)
    with TestClient(app, base_url="http://kvmnetd") as client:
        assert app.state.supervisor.ready.wait(10)
        yield client


@contextlib.contextmanager
def client_on_bridge(ns: str, bridge: str, mac: str) -> Iterator[str]:
    """A DHCP client's own namespace, whose eth0 (with `mac`) is cabled to `bridge` of `ns`."""
    with throwaway_netns() as client:
        ip(ns, "link", "add", "dhc0", "type", "veth", "peer", "name", "eth0", "netns", client)
        ip(ns, "link", "set", "dhc0", "master", bridge, "up")
        ip(client, "link", "set", "eth0", "address", mac, "up")
        yield client


def take_lease(client: str, hostname: str) -> str:
    """Let busybox udhcpc get a lease (then quit); returns the address it was offered."""
    result = in_netns(
        client,
        *("busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "10", "-T", "1"),
        *("-s", "/bin/true", "-x", f"hostname:{hostname}"),
    )
    for line in (result.stdout + result.stderr).splitlines():
        if "obtained" in line or "lease of" in line:
            return line.split("lease of ")[1].split()[0]
    raise AssertionError(f"udhcpc got no lease: {result.stdout}{result.stderr}")


def leases(api: TestClient) -> list[dict[str, Any]]:
    r = api.get("/v1/networks/nat0/leases")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def nic_of(api: TestClient, vm: dict[str, Any]) -> dict[str, Any]:
    return api.get(f"/v1/vms/{vm['id']}").json()["nics"][0]  # type: ignore[no-any-return]


def test_fixed_address_in_the_range_is_kept_and_one_over_a_fixed_one_is_refused(
    api: TestClient, settings: Settings
) -> None:
    make_bridge(api)
    body = {
        "name": "db",
        "power_state": "stopped",
        "boot": {"kernel": "/nonexistent"},
        "nics": [{"backend": "bridge", "bridge": "br0", "ipv4": "10.91.0.130"}],
    }
    # no managed network on br0 yet: the bridge's state is in the way (409), not the body
    r = api.post("/v1/vms", json=body)
    assert r.status_code == 409 and "managed network" in r.json()["detail"], r.text
    network = make_network(api)  # 10.91.0.0/24, DHCP range 10.91.0.128-10.91.0.254

    def hosts_file() -> str:
        path = settings.run_dir / "networks" / str(network["id"]) / "dhcp-hosts"
        return path.read_text() if path.exists() else ""

    web = make_stopped_vm(api, "web", ipv4="10.91.0.130")  # inside the range
    assert nic_of(api, web)["ipv4"] == "10.91.0.130"
    # its static lease is in dnsmasq's hosts file: dnsmasq hands that address to no other
    mac = nic_of(api, web)["mac"]
    assert eventually(lambda: f"{mac},10.91.0.130" in hosts_file()), hosts_file()
    r = api.post("/v1/vms", json=body)
    assert r.status_code == 409, r.text
    assert r.headers["content-type"] == PROBLEM
    assert "already given to another NIC" in r.json()["detail"], r.json()
    assert [v["name"] for v in api.get("/v1/vms").json()["items"]] == ["web"]  # nothing half-made

    # a range PATCHed over existing fixed addresses is fine: they stay reserved
    other = make_stopped_vm(api, "other", ipv4="10.91.0.100")
    r = api.patch(
        "/v1/networks/nat0",
        json={"dhcp": {"range_start": "10.91.0.64", "range_end": "10.91.0.200"}},
    )
    assert r.status_code in (200, 202), r.text
    assert api.get("/v1/networks/nat0").json()["dhcp"]["range_start"] == "10.91.0.64"
    assert nic_of(api, other)["ipv4"] == "10.91.0.100"


def test_a_leased_address_is_refused_naming_its_holder(quick_api: TestClient, netns: str) -> None:
    """A real client takes a lease; once the range no longer covers it, it still holds it,
    and a VM asking for that address is told who has it. A database from before this check,
    where a NIC's fixed address is the stranger's, gets that reported on the NIC."""
    api = quick_api
    make_bridge(api)
    make_network(api)
    stranger = "02:00:00:00:ab:01"
    with client_on_bridge(netns, "br0", stranger) as client:
        leased = take_lease(client, "stranger")
    assert leased.startswith("10.91.0.")
    r = api.patch(
        "/v1/networks/nat0?wait=10",
        json={"dhcp": {"range_start": "10.91.0.250", "range_end": "10.91.0.254"}},
    )
    assert r.status_code == 200, r.text
    lease = eventually(lambda: [x for x in leases(api) if x["mac"] == stranger])
    assert lease and lease[0]["ip"] == leased and lease[0]["fixed"] is False, lease

    body = {
        "name": "web",
        "power_state": "stopped",
        "boot": {"kernel": "/nonexistent"},
        "nics": [{"backend": "bridge", "bridge": "br0", "ipv4": leased}],
    }
    r = api.post("/v1/vms", json=body)
    assert r.status_code == 409, r.text
    problem = r.json()
    assert f"MAC {stranger}" in problem["detail"] and "stranger" in problem["detail"], problem
    assert problem["holder"]["mac"] == stranger and problem["holder"]["ip"] == leased
    # the lowest free address is fine, and an automatic one never lands on the lease
    assert make_stopped_vm(api, "web", ipv4="10.91.0.2")
    db = make_stopped_vm(api, "db")
    assert nic_of(api, db)["ipv4"] != leased

    # as an older kvmnetd allowed: db's fixed address is the stranger's lease
    database = api.app.state.context.db  # type: ignore[attr-defined]
    with database.unit_of_work() as session:
        nic = session.scalars(select(VmNic).where(VmNic.vm_id == db["id"])).one()
        nic.ipv4 = leased
    reason = eventually(lambda: nic_of(api, db)["address_status_reason"])
    assert reason and f"{leased} of NIC 0 of VM 'db' is leased to MAC {stranger}" in reason


def test_a_nic_holding_another_address_is_reported_and_its_forwards_withheld(
    quick_api: TestClient, netns: str
) -> None:
    """A client got a dynamic lease; then a VM NIC is made with the same MAC (a VM re-created
    with its MAC): its fixed address is another. Until the guest renews, the NIC says so and
    port forwards to it have no rule; after the renewal it holds its fixed address."""
    api = quick_api
    make_bridge(api)
    make_network(api)
    mac = "02:00:00:00:ab:02"
    with client_on_bridge(netns, "br0", mac) as client:
        dynamic = take_lease(client, "web")
        vm = api.post(
            "/v1/vms?wait=10",
            json={
                "name": "web",
                "power_state": "stopped",
                "boot": {"kernel": "/nonexistent"},
                "nics": [{"backend": "bridge", "bridge": "br0", "mac": mac}],
            },
        ).json()
        fixed = nic_of(api, vm)["ipv4"]
        assert fixed != dynamic

        def reported() -> dict[str, Any] | None:
            nic = nic_of(api, vm)
            return nic if nic["address_status_reason"] else None

        nic = eventually(reported)
        assert nic is not None, nic_of(api, vm)
        assert nic["observed_ipv4"] == dynamic
        assert f"holds {dynamic}" in nic["address_status_reason"]
        assert [x["fixed"] for x in leases(api) if x["mac"] == mac] == [False]
        bus = api.app.state.context.bus  # type: ignore[attr-defined]
        seen = [e.data for e in bus.since(0) if e.type == "network.nic_address"]
        assert seen and seen[-1]["observed_ipv4"] == dynamic and seen[-1]["vm"] == "web", seen

        r = api.post("/v1/port-forwards?wait=10", json={"network": "nat0", "vm": "web", "port": 80})
        forward = r.json()
        assert forward["status"] == "error", forward
        assert f"holds {dynamic}" in forward["status_reason"]
        assert f"forward {forward['id']}" not in comments(netns)  # no rule to a stranger

        # the guest renews: dnsmasq moves it to its static lease; the forward follows
        assert take_lease(client, "web") == fixed
        healed = eventually(
            lambda: api.get(f"/v1/port-forwards/{forward['id']}").json()["status"] == "active"
        )
        assert healed, api.get(f"/v1/port-forwards/{forward['id']}").json()
        assert nic_of(api, vm)["observed_ipv4"] == fixed
        assert nic_of(api, vm)["address_status_reason"] is None
        assert f"forward {forward['id']}" in comments(netns)
        assert [x["fixed"] for x in leases(api) if x["mac"] == mac] == [True]


def test_a_subnet_used_by_a_foreign_interface_is_refused(api: TestClient, netns: str) -> None:
    ip(netns, "link", "add", "lan0", "type", "veth", "peer", "name", "lan0p")
    ip(netns, "addr", "add", "192.168.100.5/24", "dev", "lan0")
    ip(netns, "link", "set", "lan0", "up")
    make_bridge(api)
    body = {"name": "nat0", "bridge": "br0", "subnet": "192.168.100.0/24"}
    r = api.post("/v1/networks", json=body)
    assert r.status_code == 409, r.text
    problem = r.json()
    assert problem["interface"] == "lan0" and problem["prefix"] == "192.168.100.5/24", problem
    assert "already in use by interface lan0" in problem["detail"]
    assert api.get("/v1/networks").json()["items"] == []

    # a connected route of a foreign interface counts too, whatever part of it overlaps
    ip(netns, "route", "add", "10.77.0.0/16", "dev", "lan0")
    r = api.post("/v1/networks", json={**body, "subnet": "10.77.5.0/24"})
    assert r.status_code == 409, r.text
    assert (r.json()["interface"], r.json()["prefix"]) == ("lan0", "10.77.0.0/16")

    # our own bridge's address in the subnet is no clash
    r = api.patch("/v1/bridges/br0?wait=10", json={"addresses": ["10.91.0.1/24"]})
    assert r.status_code == 200, r.text
    assert make_network(api, subnet="10.91.0.0/24")["status"] == "active"
    checks = {c["name"]: c for c in api.get("/v1/host/diagnostics").json()}
    assert checks["subnet_clashes"]["ok"] is True, checks["subnet_clashes"]


def test_a_clash_that_appears_later_is_reported_at_the_next_full_pass(
    quick_api: TestClient, netns: str
) -> None:
    api = quick_api
    make_bridge(api)
    make_network(api, subnet="192.168.100.0/24")
    ip(netns, "link", "add", "lan0", "type", "veth", "peer", "name", "lan0p")
    ip(netns, "addr", "add", "192.168.100.5/24", "dev", "lan0")

    def status() -> dict[str, Any]:
        return api.get("/v1/networks/nat0").json()  # type: ignore[no-any-return]

    network = eventually(lambda: status() if status()["status"] == "error" else None)
    assert network, status()
    assert "in use by interface lan0" in network["status_reason"]
    assert "192.168.100.5/24" in network["status_reason"]
    checks = {c["name"]: c for c in api.get("/v1/host/diagnostics").json()}
    clash = checks["subnet_clashes"]
    assert clash["ok"] is False and clash["severity"] == "error", clash
    assert clash["data"]["clashes"][0]["interface"] == "lan0"
    assert clash["data"]["clashes"][0]["network"] == "nat0"

    ip(netns, "link", "del", "lan0")
    assert eventually(lambda: status()["status"] == "active"), status()
    assert status()["status_reason"] is None


def test_a_garbled_lease_file_never_breaks_vm_creation(api: TestClient, settings: Settings) -> None:
    """Garbled lines are skipped and the valid ones still count; an undecodable file means
    no lease is known (the range check still holds)."""
    make_bridge(api)
    network = make_network(api)
    path = settings.state_dir / "networks" / network["id"] / "dnsmasq.leases"
    path.write_text(
        "garbage\n4102444800 02:00:00:00:ab:03 not-an-ip x *\n"
        "4102444800 02:00:00:00:ab:04 10.91.0.9 printer *\n"
    )
    r = api.post(
        "/v1/vms",
        json={
            "name": "web",
            "power_state": "stopped",
            "boot": {"kernel": "/nonexistent"},
            "nics": [{"backend": "bridge", "bridge": "br0", "ipv4": "10.91.0.9"}],
        },
    )
    assert r.status_code == 409 and "printer" in r.json()["detail"], r.text
    path.write_bytes(b"\xff\xfe\x00garbage")
    assert nic_of(api, make_stopped_vm(api, "web", ipv4="10.91.0.9"))["ipv4"] == "10.91.0.9"


def refused(r: Any, holder: dict[str, str] | None = None) -> dict[str, Any]:
    assert r.status_code == 409, r.text
    assert r.headers["content-type"] == PROBLEM
    problem: dict[str, Any] = r.json()
    if holder is not None:
        assert {k: problem["holder"][k] for k in holder} == holder, problem
    return problem


def test_a_link_address_someone_holds_is_refused(api: TestClient, netns: str) -> None:
    make_bridge(api)
    make_network(api)  # 10.91.0.0/24 on br0, gateway 10.91.0.1
    make_stopped_vm(api, "web", ipv4="10.91.0.10")
    make_bridge(api, "br1", addresses=["10.60.0.1/24"])

    # the gateway of nat0, and any address in its subnet, on another link
    r = api.post("/v1/bridges", json={"name": "br2", "addresses": ["10.91.0.1/24"]})
    assert "network 'nat0'" in refused(r, {"kind": "network", "name": "nat0"})["detail"]
    r = api.post("/v1/taps", json={"name": "tq1", "addresses": ["10.91.0.10/24"]})
    refused(r, {"kind": "network", "name": "nat0", "link": "br0"})
    # the fixed address of VM web on the network's own link
    r = api.patch("/v1/bridges/br0", json={"addresses": ["10.91.0.10/24"]})
    refused(r, {"kind": "vm_nic", "name": "VM 'web' NIC 0", "ip": "10.91.0.10/32"})
    # another of our links' address
    r = api.post("/v1/bridges", json={"name": "br2", "addresses": ["10.60.0.1/24"]})
    refused(r, {"kind": "bridge", "name": "br1"})
    # a network whose subnet holds another link's address
    make_bridge(api, "br3")
    r = api.post("/v1/networks", json={"name": "nat1", "bridge": "br3", "subnet": "10.60.0.0/24"})
    refused(r, {"kind": "bridge", "name": "br1", "ip": "10.60.0.1/24"})
    # a foreign interface's address (an uplink NIC's): the network create's check
    ip(netns, "link", "add", "lan0", "type", "veth", "peer", "name", "lan0p")
    ip(netns, "addr", "add", "192.168.100.5/24", "dev", "lan0")
    r = api.patch("/v1/bridges/br3", json={"addresses": ["192.168.100.5/24"]})
    problem = refused(r)
    assert (problem["interface"], problem["prefix"]) == ("lan0", "192.168.100.5/24"), problem

    # nothing changed
    kernel = links(netns)
    assert "br2" not in kernel and "tq1" not in kernel
    assert [a for a in kernel["br0"].addresses if a.startswith("10.")] == ["10.91.0.1/24"]
    assert not [a for a in kernel["br3"].addresses if a.startswith(("10.", "192."))]
    assert [n["name"] for n in api.get("/v1/networks").json()["items"]] == ["nat0"]
    # a free address on its own still works, and re-sending one's own address too
    r = api.patch("/v1/bridges/br1?wait=10", json={"addresses": ["10.60.0.1/24", "10.61.0.1/24"]})
    assert r.status_code == 200, r.text


def test_a_routed_networks_tap_cannot_join_a_bridge(api: TestClient, netns: str) -> None:
    make_bridge(api)
    make_tap(api, "tq3")
    r = api.post(
        "/v1/networks?wait=10", json={"name": "rt0", "tap": "tq3", "subnet": "10.93.0.0/24"}
    )
    assert r.status_code == 201, r.text
    for r in (
        api.post("/v1/taps/tq3/attach", json={"bridge": "br0"}),
        api.patch("/v1/taps/tq3", json={"bridge": "br0"}),
    ):
        assert r.status_code == 409, r.text
        problem = r.json()
        assert problem["type"].endswith("in-use"), problem
        assert [d["name"] for d in problem["dependents"]] == ["rt0"], problem
    assert links(netns)["tq3"].master is None
    assert api.get("/v1/taps/tq3").json()["bridge_id"] is None
