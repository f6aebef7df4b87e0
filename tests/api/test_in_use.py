"""In-use protection (issue 9 item 3), one table of (resource, dependents) pairs on the real
kernel of a fresh namespace with a live dnsmasq.

Each case deletes one resource of the same small world twice: without `force` the answer is
409 `in-use` listing exactly its dependents, and nothing changed (rows, kernel links read
back through netlink, the dnsmasq still the same process); with `?force=true` the delete
finishes, the operation says what it detached, no row is left unsettled, every remaining
link is in the kernel as the database says, and the remaining NICs keep their fixed
addresses. No guest boots: VMs are stopped, or `running` with a kernel that does not exist
(held in error, never launched), which is enough to show a forced delete stops them.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.settings import Settings
from tests.api.test_links_api import make_bridge, make_tap
from tests.api.test_networks_api import alive, make_network
from tests.db_template import seed_state_dir
from tests.guest.build import build_guest, kernel_cmdline
from tests.guest.console import parse_ready
from tests.netns_tools import links

PROBLEM = "application/problem+json"
IN_USE = "urn:kvmnetd:problem:in-use"
COLLECTIONS = ("bridges", "taps", "networks", "vms", "port-forwards")
UNSETTLED = {"pending", "deleting", "starting", "stopping"}
# fields that change without a request: a bridge's MAC follows its ports (issue 9 item 1)
MOVING = ("updated_at", "ports", "observed_mac", "observed_mtu", "observed_oper_state")


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    """As conftest's, with a run directory short enough for qemu's QMP socket path."""
    run_dir = Path(tempfile.mkdtemp(prefix="kvt-inuse-"))
    run_dir.chmod(0o755)  # qemu runs as kvmnetd-qemu and must reach its run directory
    try:
        yield Settings(
            state_dir=seed_state_dir(tmp_path / "state"),
            run_dir=run_dir,
            listen="",
            reconcile_interval=30,
            probe_kernel=tmp_path / "no-kernel",
        )
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _vm(api: TestClient, name: str, nics: list[dict[str, Any]], running: bool = False) -> None:
    body = {
        "name": name,
        "power_state": "running" if running else "stopped",
        "boot": {"kernel": "/nonexistent"},  # never boots: no guest CPU spent here
        "nics": nics,
    }
    r = api.post("/v1/vms?wait=10", json=body)
    assert r.status_code in (200, 201, 202), r.text


def build_world(api: TestClient) -> None:
    """br0 carries network nat0 (with a port forward to web) and tap1; web and db are on
    br0 and db connects to web's socket; app is on br1 and uses tap2; tap3 carries the
    routed network rt0."""
    make_bridge(api, "br0")
    make_bridge(api, "br1")
    make_tap(api, "tap1", bridge="br0")
    make_tap(api, "tap2")
    make_tap(api, "tap3")
    make_network(api, name="nat0", bridge="br0", subnet="10.91.0.0/24")
    r = api.post(
        "/v1/networks?wait=10",
        json={"name": "rt0", "tap": "tap3", "subnet": "10.92.0.0/24", "nat": {"enabled": False}},
    )
    assert r.status_code == 201, r.text
    _vm(
        api,
        "web",
        [
            {"backend": "bridge", "bridge": "br0"},
            {"backend": "socket", "socket": {"mode": "listen"}},
        ],
    )
    _vm(
        api,
        "db",
        [
            {"backend": "bridge", "bridge": "br0", "ipv4": "10.91.0.50"},
            {"backend": "socket", "socket": {"mode": "connect", "peer": "web/1"}},
        ],
    )
    _vm(
        api,
        "app",
        [{"backend": "bridge", "bridge": "br1"}, {"backend": "tap", "tap": "tap2"}],
        running=True,
    )
    r = api.post(
        "/v1/port-forwards?wait=10",
        json={"name": "fw", "network": "nat0", "vm": "web", "port": 8080, "target_port": 80},
    )
    assert r.status_code == 201, r.text
    assert settled(api), "the world settles before the cases start"


@dataclass(frozen=True)
class Case:
    path: str
    refused_by: set[tuple[str, str]]  # (kind, name) of each dependent
    forced: set[tuple[str, str, str]]  # (kind, name, action) the forced delete reports


CASES = {
    "network-with-nics-and-forward": Case(
        "/v1/networks/nat0",
        {("vm_nic", "web/0"), ("vm_nic", "db/0"), ("port_forward", "fw")},
        {
            ("vm_nic", "web/0", "address_released"),
            ("vm_nic", "db/0", "address_released"),
            ("port_forward", "fw", "deleted"),
        },
    ),
    "bridge-with-nics-tap-and-network": Case(
        "/v1/bridges/br0",
        {("vm_nic", "web/0"), ("vm_nic", "db/0"), ("tap", "tap1"), ("network", "nat0")},
        {
            ("vm_nic", "web/0", "removed"),
            ("vm_nic", "db/0", "removed"),
            ("port_forward", "fw", "deleted"),
            ("tap", "tap1", "detached"),
            ("network", "nat0", "deleted"),
        },
    ),
    "bridge-with-nic-of-a-running-vm": Case(
        "/v1/bridges/br1",
        {("vm_nic", "app/0")},
        {("vm_nic", "app/0", "removed"), ("vm", "app", "stopped")},
    ),
    "tap-used-by-a-nic": Case(
        "/v1/taps/tap2",
        {("vm_nic", "app/1")},
        {("vm_nic", "app/1", "removed"), ("vm", "app", "stopped")},
    ),
    "tap-carrying-a-network": Case(
        "/v1/taps/tap3", {("network", "rt0")}, {("network", "rt0", "deleted")}
    ),
    "vm-with-forward-and-socket-peer": Case(
        "/v1/vms/web",
        {("port_forward", "fw"), ("vm_nic", "db/1")},
        {("port_forward", "fw", "deleted"), ("vm_nic", "db/1", "removed")},
    ),
}


def rows(api: TestClient) -> dict[str, list[dict[str, Any]]]:
    """Every row the API shows, without the fields that move on their own."""
    found: dict[str, list[dict[str, Any]]] = {}
    for collection in COLLECTIONS:
        r = api.get(f"/v1/{collection}")
        assert r.status_code == 200, r.text
        found[collection] = [
            {k: v for k, v in item.items() if k not in MOVING} for item in r.json()["items"]
        ]
    return found


def kernel(netns: str) -> dict[str, tuple[str | None, list[str]]]:
    return {name: (link.master, sorted(link.addresses)) for name, link in links(netns).items()}


def dnsmasq_pids(api: TestClient) -> dict[str, int]:
    return {n["name"]: n["dnsmasq_pid"] for n in api.get("/v1/networks").json()["items"]}


def settled(api: TestClient, timeout: float = 15.0) -> bool:
    """Every row settled: none pending or deleting, every generation applied."""

    def quiet() -> bool:
        return all(
            item["status"] not in UNSETTLED and item["generation"] == item["observed_generation"]
            for collection in COLLECTIONS
            for item in api.get(f"/v1/{collection}").json()["items"]
        )

    return eventually(quiet, timeout)


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def fixed_addresses(api: TestClient) -> dict[str, tuple[str | None, str | None]]:
    """NIC id -> (network id, fixed address) of every NIC."""
    return {
        nic["id"]: (nic["network_id"], nic["ipv4"])
        for vm in api.get("/v1/vms").json()["items"]
        for nic in vm["nics"]
    }


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_delete_in_use_is_refused_and_force_detaches(
    api: TestClient, netns: str, case: Case
) -> None:
    build_world(api)
    before_rows, before_kernel, pids = rows(api), kernel(netns), dnsmasq_pids(api)
    addresses = fixed_addresses(api)

    r = api.delete(f"{case.path}?wait=10")
    assert r.status_code == 409, r.text
    assert r.headers["content-type"] == PROBLEM
    problem = r.json()
    assert problem["type"] == IN_USE
    assert {(d["kind"], d["name"]) for d in problem["dependents"]} == case.refused_by
    assert all(d["id"] for d in problem["dependents"])
    assert "?force=true" in problem["detail"]
    # nothing changed: rows, kernel links, dnsmasq processes
    assert rows(api) == before_rows
    assert kernel(netns) == before_kernel
    assert dnsmasq_pids(api) == pids and all(alive(pid) for pid in pids.values())

    r = api.delete(f"{case.path}?force=true&wait=10")
    assert r.status_code == 204, r.text
    operation = api.get(r.headers["Operation-Location"]).json()
    assert operation["status"] == "succeeded", operation
    reported = {(d["kind"], d["name"], d["action"]) for d in operation["detached"]}
    assert reported == case.forced
    assert api.get(case.path).status_code == 404
    assert settled(api), rows(api)

    # every remaining link is in the kernel as the database says; nothing of ours is left over
    after = rows(api)
    names = {b["name"] for b in after["bridges"]} | {t["name"] for t in after["taps"]}
    live = kernel(netns)
    assert names <= live.keys()
    bridge_names = {b["id"]: b["name"] for b in after["bridges"]}
    for tap in after["taps"]:
        assert live[tap["name"]][0] == bridge_names.get(tap["bridge_id"]), tap
    gone = case.path.rsplit("/", 1)[1]
    assert gone not in live
    # the remaining networks' dnsmasq is the same process; remaining NICs keep their address
    remaining = dnsmasq_pids(api)
    assert all(remaining[name] == pids[name] and alive(pids[name]) for name in remaining)
    released = {d["id"] for d in operation["detached"] if d["action"] == "address_released"}
    for nic_id, fixed in fixed_addresses(api).items():
        if nic_id not in released and fixed[0] in {n["id"] for n in after["networks"]}:
            assert fixed == addresses[nic_id], nic_id
    # a VM that lost a NIC keeps the others, renumbered from 0, and is stopped
    for vm in after["vms"]:
        assert [nic["index"] for nic in vm["nics"]] == list(range(len(vm["nics"])))
    stopped = {d["id"] for d in operation["detached"] if d["action"] == "stopped"}
    for vm in after["vms"]:
        if vm["id"] in stopped:
            assert (vm["power_state"], vm["status"]) == ("stopped", "stopped"), vm


def test_detach_taps_is_the_old_spelling_for_taps_only(api: TestClient, netns: str) -> None:
    """?detach_taps=true (deprecated) forces past attached taps, not past anything else."""
    make_bridge(api, "br0")
    make_tap(api, "tap1", bridge="br0")
    _vm(api, "web", [{"backend": "bridge", "bridge": "br0"}])
    r = api.delete("/v1/bridges/br0?detach_taps=true")
    assert r.status_code == 409, r.text
    assert {(d["kind"], d["name"]) for d in r.json()["dependents"]} == {("vm_nic", "web/0")}
    assert links(netns)["tap1"].master == "br0"
    assert api.delete("/v1/vms/web?wait=10").status_code == 204
    r = api.delete("/v1/bridges/br0?detach_taps=true&wait=10")
    assert r.status_code == 204, r.text
    assert links(netns)["tap1"].master is None


def test_link_of_a_vm_being_deleted_goes_after_it(api: TestClient, netns: str) -> None:
    """A VM on its way out does not keep its bridge: the bridge delete is accepted at once,
    and the bridge row goes once the VM's rows are gone (never a foreign-key loop)."""
    make_bridge(api, "br0")
    _vm(api, "web", [{"backend": "bridge", "bridge": "br0"}])
    assert api.delete("/v1/vms/web").status_code == 202
    r = api.delete("/v1/bridges/br0?wait=10")
    assert r.status_code in (202, 204), r.text
    assert eventually(lambda: api.get("/v1/bridges/br0").status_code == 404)
    assert api.get("/v1/vms/web").status_code == 404
    assert "br0" not in links(netns)


def test_forced_bridge_delete_stops_a_running_guest_and_takes_its_tap(
    api: TestClient, netns: str
) -> None:
    """The one case that needs a real guest: a running VM whose NIC's bridge is force-
    deleted is powered down (the guest never keeps a NIC whose bridge is gone); its tap and
    its qemu are gone, and the VM remains, stopped, without that NIC."""
    guest = build_guest("virtio")
    make_bridge(api, "br0")
    body = {
        "name": "web",
        "memory_mib": 128,
        "boot": {
            "kernel": str(guest.kernel),
            "initrd": str(guest.initrd),
            "cmdline": kernel_cmdline(ip="10.93.0.2/24"),
        },
        "nics": [{"backend": "bridge", "bridge": "br0"}, {"backend": "user"}],
    }
    r = api.post("/v1/vms?wait=30", json=body)
    assert r.status_code == 201, r.text
    vm = r.json()
    assert vm["status"] == "running", vm
    tap, pid = vm["nics"][0]["tap_name"], vm["pid"]
    assert links(netns)[tap].master == "br0"
    assert eventually(
        lambda: parse_ready(api.get(f"/v1/vms/{vm['id']}/console").text) is not None, 60
    ), "the guest booted (it powers off on ACPI only once its init runs)"

    r = api.delete("/v1/bridges/br0?force=true&wait=30")
    assert r.status_code == 204, r.text
    detached = api.get(r.headers["Operation-Location"]).json()["detached"]
    assert {(d["kind"], d["name"], d["action"]) for d in detached} == {
        ("vm_nic", "web/0", "removed"),
        ("vm", "web", "stopped"),
    }
    assert eventually(lambda: api.get(f"/v1/vms/{vm['id']}").json()["status"] == "stopped", 30)
    assert not alive(pid)
    kernel = links(netns)
    assert tap not in kernel and "br0" not in kernel
    after = api.get(f"/v1/vms/{vm['id']}").json()
    assert [(n["index"], n["backend"]) for n in after["nics"]] == [(0, "user")]
    assert after["power_state"] == "stopped"
