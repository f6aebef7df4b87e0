"""VMs through the real daemon with the real test guest under TCG: the how-to's user
networking with a port forward, stop and delete, kill -9 of qemu, and a daemon restart that
re-adopts the running VM instead of starting a second one."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyroute2.ethtool import Ethtool

from app.host.netns import enter_for_this_thread
from tests.e2e.helpers import E2EDaemon, assert_problem, ok, running_daemon, wait_for
from tests.guest.build import Guest, build_guest, kernel_cmdline
from tests.guest.console import parse_hello, parse_ready
from tests.netns_tools import in_namespace

FORWARD_PORT = 45555


@pytest.fixture(scope="module")
def guest() -> Guest:
    return build_guest("virtio")


@pytest.fixture
def daemon(netns: str, request: pytest.FixtureRequest) -> Iterator[E2EDaemon]:
    # a short work dir: a VM's QMP socket path must fit a unix socket address (108 bytes)
    workdir = Path(tempfile.mkdtemp(prefix="kvt-", dir="/tmp"))
    workdir.chmod(0o755)  # an unprivileged qemu must reach its run directory below
    try:
        with running_daemon(netns, workdir, request) as d:
            yield d
    finally:
        _kill_leftover_qemus(netns)
        shutil.rmtree(workdir, ignore_errors=True)


def _qemus_in(netns: str) -> list[int]:
    """VM qemu processes (they carry -uuid; the capability probe's short qemu runs do not)
    running in `netns` (ours: the test created the namespace)."""
    target = os.stat(f"/run/netns/{netns}").st_ino
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.stat(entry / "ns" / "net").st_ino != target:
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if b"qemu-system" in argv[0] and b"-uuid" in argv:
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _kill_leftover_qemus(netns: str) -> None:
    for pid in _qemus_in(netns):
        os.kill(pid, signal.SIGKILL)


def vm_body(guest: Guest, name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "memory_mib": 256,
        "boot": {
            "kernel": str(guest.kernel),
            "initrd": str(guest.initrd),
            "cmdline": kernel_cmdline(dhcp=True),
        },
        "nics": [
            {
                "backend": "user",
                "user": {"forwards": [{"host_port": FORWARD_PORT, "guest_port": 7777}]},
            }
        ],
        **extra,
    }


def tcp_hello(netns: str, port: int) -> str:
    """Connect to 127.0.0.1:port inside `netns`."""
    return tcp_hello_to(netns, "127.0.0.1", port)


def console_ready(daemon: E2EDaemon, vm_id: str) -> Any:
    with daemon.client() as client:
        return parse_ready(client.get(f"/v1/vms/{vm_id}/console").text)


def test_user_networking_vm_with_port_forward(daemon: E2EDaemon, netns: str, guest: Guest) -> None:
    with daemon.client(timeout=120) as client:
        vm = ok(client.post("/v1/vms?wait=60", json=vm_body(guest, "vm1")), 201)
        assert vm["status"] == "running", vm
        assert vm["accelerator_used"] == "tcg"  # auto never picks KVM where it hangs
        assert vm["pid"] and vm["nics"][0]["mac"].startswith("52:54:00:")
        ready = wait_for(lambda: console_ready(daemon, vm["id"]), 60, "the guest's readiness")
        assert ready.address == "10.0.2.15"
        assert ready.mac == vm["nics"][0]["mac"]
        hello = parse_hello(
            wait_for(lambda: tcp_hello(netns, FORWARD_PORT), 30, "the forwarded port")
        )
        assert hello is not None and hello.mac == vm["nics"][0]["mac"]

        # a second VM may not take the same host port, nor the same MAC
        clash = client.post("/v1/vms", json=vm_body(guest, "vm2"))
        assert_problem(clash, 409)
        mac = vm["nics"][0]["mac"]
        body = vm_body(guest, "vm3", nics=[{"backend": "user", "mac": mac}])
        assert_problem(client.post("/v1/vms", json=body), 409)

        stopped = ok(client.post(f"/v1/vms/{vm['id']}/stop?wait=60"), 200)
        assert stopped["status"] == "stopped"
        assert not _alive(vm["pid"])
        assert client.delete(f"/v1/vms/{vm['id']}?wait=60").status_code == 204
        assert client.get(f"/v1/vms/{vm['id']}").status_code == 404
    assert _qemus_in(netns) == []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and b"qemu" in Path(f"/proc/{pid}/cmdline").read_bytes()


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"nics": [{"backend": "user", "model": "ne2k_isa"}]}, 422),  # ISA card on pc
        ({"nics": [{"backend": "user", "model": "e1000"}], "machine": "isapc"}, 422),
        ({"nics": [{"backend": "user", "model": "tulip-9000"}]}, 422),
        ({"memory_mib": 10**9}, 422),
        ({"nics": [{"backend": "bridge", "bridge": "nope"}]}, 404),
    ],
)
def test_bad_vms_are_refused_before_qemu_runs(
    daemon: E2EDaemon, netns: str, guest: Guest, change: dict[str, Any], status: int
) -> None:
    with daemon.client(timeout=60) as client:
        assert_problem(client.post("/v1/vms", json={**vm_body(guest, "bad"), **change}), status)
        assert ok(client.get("/v1/vms"), 200)["items"] == []
    assert _qemus_in(netns) == []


def test_qemu_failure_reports_qemus_own_message(daemon: E2EDaemon, guest: Guest) -> None:
    body = vm_body(guest, "vm1")
    body["boot"]["kernel"] = "/nonexistent/vmlinuz"
    with daemon.client(timeout=60) as client:
        vm = ok(client.post("/v1/vms?wait=30", json=body), 201, 202)
        vm = wait_for(
            lambda: (v := client.get(f"/v1/vms/{vm['id']}").json())["status"] == "error" and v,
            30,
            "the VM to fail",
        )
        assert "/nonexistent/vmlinuz" in (vm["last_output"] or vm["status_reason"] or "")


def test_daemon_restart_readopts_the_vm_and_kill_9_is_seen(
    daemon: E2EDaemon, netns: str, guest: Guest
) -> None:
    with daemon.client(timeout=120) as client:
        vm = ok(client.post("/v1/vms?wait=60", json=vm_body(guest, "vm1")), 201)
    daemon.kill()  # kill -9 of the daemon: the VM keeps running
    assert _alive(vm["pid"])
    daemon.start()
    with daemon.client(timeout=120) as client:
        again = ok(client.get(f"/v1/vms/{vm['id']}"), 200)
        assert (again["status"], again["pid"]) == ("running", vm["pid"])
        assert _qemus_in(netns) == [vm["pid"]]  # re-adopted, not started twice
        wait_for(lambda: console_ready(daemon, vm["id"]), 60, "readiness")
        # the re-adopted VM is still fully under control: a graceful stop works
        stopped = ok(client.post(f"/v1/vms/{vm['id']}/stop?wait=60"), 200)
        assert stopped["status"] == "stopped"
        assert "KVT-POWEROFF" in client.get(f"/v1/vms/{vm['id']}/console").text
        assert _qemus_in(netns) == []
        vm = ok(client.post(f"/v1/vms/{vm['id']}/start?wait=60"), 200)
        assert vm["status"] == "running"
        os.kill(vm["pid"], signal.SIGKILL)
        started = time.monotonic()
        crashed = wait_for(
            lambda: (v := client.get(f"/v1/vms/{vm['id']}").json())["status"] == "crashed" and v,
            10,
            "the crash to be seen",
        )
        assert time.monotonic() - started < 3
        assert crashed["exit_code"] in (None, -9, 137)


def static_vm(guest: Guest, name: str, backend: dict[str, Any], ip: str, gw: str) -> dict[str, Any]:
    return {
        "name": name,
        "boot": {
            "kernel": str(guest.kernel),
            "initrd": str(guest.initrd),
            "cmdline": kernel_cmdline(ip=ip, gw=gw),
        },
        "nics": [backend],
    }


def host_link(client: Any, collection: str, name: str) -> dict[str, Any]:
    """A bridge or tap of ours with the how-to's host address 192.168.105.1/24."""
    body = {"name": name, "addresses": ["192.168.105.1/24"]}
    return ok(client.post(f"/v1/{collection}?wait=10", json=body), 201)  # type: ignore[no-any-return]


def static_guest(
    client: Any, guest: Guest, name: str, backend: dict[str, Any], ip: str
) -> dict[str, Any]:
    """A running guest with a static `ip`/24 and 192.168.105.1 as its gateway."""
    body = static_vm(guest, name, backend, f"{ip}/24", "192.168.105.1")
    return ok(client.post("/v1/vms?wait=60", json=body), 201)  # type: ignore[no-any-return]


def ping(netns: str, address: str) -> bool:
    argv = ["ping"] if shutil.which("ping") else ["busybox", "ping"]
    result = subprocess.run(
        ["ip", "netns", "exec", netns, *argv, "-c", "1", "-W", "2", address],
        capture_output=True,
        timeout=10,
        check=False,
    )
    return result.returncode == 0


# virtio 1.2, 5.1.3: feature bits as the guest's sysfs `features` string numbers them
VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_MQ = 0, 1, 7, 22


def tap_offloads(netns: str, tap: str) -> set[str]:
    """The tap's enabled offload features as the kernel has them (ethtool netlink): what
    qemu set with TUNSETOFFLOAD after the guest's negotiation."""

    def read() -> set[str]:
        ethtool = Ethtool()
        try:
            features = ethtool.get_features(tap).features
        finally:
            ethtool.close()
        return {name for name, feature in features.items() if feature.enable}

    return in_namespace(netns, read)


def test_two_vms_on_the_howto_bridge(daemon: E2EDaemon, netns: str, guest: Guest) -> None:
    """The how-to's br0 with two VMs, each with its own MAC: both reachable from the host's
    address on the bridge, and the bridge's MAC table shows each guest on its own port.
    The first has two vCPUs and a NIC with two queue pairs, which its guest driver sets up
    (its sysfs rx-N directories) and negotiates (VIRTIO_NET_F_MQ); the second's NIC has
    checksum offload off: neither its guest nor its tap has checksum or segmentation
    offload, while the first's have both (as the guest says, as qemu reports it, and as the
    kernel has the taps)."""
    with daemon.client(timeout=120) as client:
        host_link(client, "bridges", "br0")
        bridge = {"backend": "bridge", "bridge": "br0"}
        multiqueue = static_vm(
            guest, "vm1", {**bridge, "queues": 2}, "192.168.105.2/24", "192.168.105.1"
        )
        vms = [
            ok(client.post("/v1/vms?wait=60", json={**multiqueue, "vcpus": 2}), 201),
            static_guest(
                client, guest, "vm2", {**bridge, "offloads": {"checksum": False}}, "192.168.105.3"
            ),
        ]
        readies = []
        for i, vm in enumerate(vms, start=1):
            ready = wait_for(lambda vm=vm: console_ready(daemon, vm["id"]), 60, "readiness")
            assert ready.address == f"192.168.105.{i + 1}"
            assert wait_for(lambda i=i: ping(netns, f"192.168.105.{i + 1}"), 20, "ping")
            readies.append(ready)
        assert (readies[0].queues, readies[1].queues) == (2, 1)
        assert readies[0].has_feature(VIRTIO_NET_F_MQ)
        for bit in (VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4):
            assert readies[0].has_feature(bit) and not readies[1].has_feature(bit), bit
        assert vms[1]["nics"][0]["offloads"] == {"checksum": False, "tso": False, "gso": False}
        devices = [ok(client.get(f"/v1/vms/{vm['id']}/devices"), 200)[0] for vm in vms]
        assert "VIRTIO_NET_F_MQ" in devices[0]["guest_features"]
        assert devices[0]["offloads"] == {"checksum": True, "tso": True, "gso": True}
        assert devices[1]["offloads"] == {"checksum": False, "tso": False, "gso": False}
        assert [d["vhost"] for d in devices] == [False, False]  # no vhost-net on this host
        taps = [tap_offloads(netns, vm["nics"][0]["tap_name"]) for vm in vms]
        assert {"tx-checksum-ip-generic", "tx-tcp-segmentation"} <= taps[0]
        assert not {"tx-checksum-ip-generic", "tx-tcp-segmentation"} & taps[1]
        fdb = ok(client.get("/v1/bridges/br0/fdb"), 200)
        learned = {e["mac"]: e["port"] for e in fdb if not e["is_local"]}
        for vm in vms:
            nic = vm["nics"][0]
            assert learned.get(nic["mac"]) == nic["tap_name"], fdb
        ports = {p["name"] for p in ok(client.get("/v1/bridges/br0"), 200)["ports"]}
        assert ports == {vm["nics"][0]["tap_name"] for vm in vms}


def test_routed_tap_as_in_the_howto(daemon: E2EDaemon, netns: str, guest: Guest) -> None:
    """tap1 with 192.168.105.1/24 as the guest's gateway; the guest uses 192.168.105.2."""
    with daemon.client(timeout=120) as client:
        host_link(client, "taps", "tap1")
        vm = static_guest(client, guest, "vm1", {"backend": "tap", "tap": "tap1"}, "192.168.105.2")
        ready = wait_for(lambda: console_ready(daemon, vm["id"]), 60, "readiness")
        assert ready.address == "192.168.105.2"
        assert wait_for(lambda: ping(netns, "192.168.105.2"), 20, "ping through tap1")
        # re-creating the tap under the running VM would cut it off: refused
        assert_problem(client.patch("/v1/taps/tap1", json={"multi_queue": True}), 409)
        assert ping(netns, "192.168.105.2")
        assert ok(client.post(f"/v1/vms/{vm['id']}/stop?wait=60"), 200)["status"] == "stopped"


@pytest.fixture(scope="module")
def legacy_guest() -> Guest:
    return build_guest("legacy-nics")


@pytest.mark.parametrize(
    ("model", "driver"),
    [("e1000", "e1000"), ("rtl8139", "8139cp"), ("ne2k_pci", "ne2k-pci"), ("pcnet", "pcnet32")],
)
def test_every_pci_nic_model_gets_its_address(
    daemon: E2EDaemon, legacy_guest: Guest, model: str, driver: str
) -> None:
    """The how-to's NIC models: the guest's own driver brings the link up and takes
    10.0.2.15 from QEMU's user networking."""
    body = vm_body(legacy_guest, f"vm-{model.replace('_', '-')}")
    body["nics"] = [{"backend": "user", "model": model}]
    with daemon.client(timeout=120) as client:
        vm = ok(client.post("/v1/vms?wait=60", json=body), 201)
        ready = wait_for(lambda: console_ready(daemon, vm["id"]), 60, f"{model} readiness")
        assert (ready.address, ready.driver, ready.mac) == (
            "10.0.2.15",
            driver,
            vm["nics"][0]["mac"],
        )
        assert client.delete(f"/v1/vms/{vm['id']}?wait=60").status_code == 204


def test_isa_ne2000_is_really_there_on_isapc(daemon: E2EDaemon, guest: Guest) -> None:
    """No Debian kernel has an ISA NE2000 driver, so no guest can use ne2k_isa: this proves,
    through qemu's own QOM (QMP), that qemu runs the isapc machine with the card present."""
    body = vm_body(
        guest, "vm-isa", machine="isapc", nics=[{"backend": "user", "model": "ne2k_isa"}]
    )
    with daemon.client(timeout=120) as client:
        vm = ok(client.post("/v1/vms?wait=60", json=body), 201)
        assert vm["status"] == "running", vm
        devices = ok(client.get(f"/v1/vms/{vm['id']}/devices"), 200)
        assert devices == [
            {
                "id": "nic0",
                "type": "ne2k_isa",
                "mac": vm["nics"][0]["mac"],
                "link_up": True,
                "mtu": None,
                # virtio's and vfio-pci's facts: none for an ISA card
                "vhost": None,
                "guest_features": None,
                "offloads": None,
                "host": None,
            }
        ]


def test_link_down_and_up_at_run_time(daemon: E2EDaemon, netns: str, guest: Guest) -> None:
    with daemon.client(timeout=120) as client:
        host_link(client, "bridges", "br0")
        vm = static_guest(
            client, guest, "vm1", {"backend": "bridge", "bridge": "br0"}, "192.168.105.2"
        )
        wait_for(lambda: console_ready(daemon, vm["id"]), 60, "readiness")
        assert wait_for(lambda: ping(netns, "192.168.105.2"), 20, "ping")
        down = ok(client.put(f"/v1/vms/{vm['id']}/nics/0/link", json={"up": False}), 200)
        assert down["link_up"] is False
        assert not ping(netns, "192.168.105.2")
        ok(client.put(f"/v1/vms/{vm['id']}/nics/0/link", json={"up": True}), 200)
        assert wait_for(lambda: ping(netns, "192.168.105.2"), 20, "ping after link up")
        assert ok(client.get(f"/v1/vms/{vm['id']}"), 200)["nics"][0]["link_up"] is True
        assert client.post(f"/v1/vms/{vm['id']}/reboot").status_code == 204
        wait_for(  # the guest boots again (and so handles the ACPI power button below)
            lambda: client.get(f"/v1/vms/{vm['id']}/console").text.count("KVT-READY") == 2,
            60,
            "the guest to come back after the reset",
        )
        stopped = ok(client.post(f"/v1/vms/{vm['id']}/stop?wait=60"), 200)
        assert stopped["status"] == "stopped"
        assert_problem(client.post(f"/v1/vms/{vm['id']}/reboot"), 409)  # not running


def test_socket_case_of_the_howto(daemon: E2EDaemon, netns: str, guest: Guest) -> None:
    """VM1 has tap1 (192.168.105.1 on the host) and listens on a socket, all on one hub;
    VM2 has no tap: it connects to VM1's socket, joins the segment, and the host reaches it
    through VM1's tap."""
    with daemon.client(timeout=120) as client:
        host_link(client, "taps", "tap1")
        vm1 = static_vm(
            guest, "vm1", {"backend": "hub", "hub": 0}, "192.168.105.2/24", "192.168.105.1"
        )
        vm1["nics"] += [
            {"model": None, "backend": "tap", "tap": "tap1", "hub": 0},
            {"model": None, "backend": "socket", "socket": {"mode": "listen"}, "hub": 0},
        ]
        first = ok(client.post("/v1/vms?wait=60", json=vm1), 201)
        vm2 = static_vm(
            guest,
            "vm2",
            {"backend": "socket", "socket": {"mode": "connect", "peer": "vm1/2"}},
            "192.168.105.3/24",
            "192.168.105.1",
        )
        second = ok(client.post("/v1/vms?wait=60", json=vm2), 201)
        assert first["nics"][0]["mac"] != second["nics"][0]["mac"]
        for vm in (first, second):
            wait_for(lambda vm=vm: console_ready(daemon, vm["id"]), 60, "readiness")
        assert wait_for(lambda: ping(netns, "192.168.105.2"), 20, "VM1 through tap1")
        assert wait_for(lambda: ping(netns, "192.168.105.3"), 20, "VM2 through VM1's socket")
        hello = parse_hello(tcp_hello_to(netns, "192.168.105.3", 7777))
        assert hello is not None and hello.mac == second["nics"][0]["mac"]


def tcp_hello_to(netns: str, address: str, port: int) -> str:
    """What the guest answers on address:port, asked from a thread that entered `netns`."""
    answer: list[str] = []

    def run() -> None:
        enter_for_this_thread(netns)
        with socket.create_connection((address, port), timeout=5) as conn:
            answer.append(conn.recv(4096).decode(errors="replace"))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    return answer[0] if answer else ""


def test_unprivileged_qemu_in_its_sandbox(daemon: E2EDaemon, netns: str, guest: Guest) -> None:
    """qemu as nobody with the strict seccomp sandbox; its bridge tap is owned by nobody."""
    with daemon.client(timeout=120) as client:
        host_link(client, "bridges", "br0")
        body = static_vm(
            guest,
            "vm1",
            {"backend": "bridge", "bridge": "br0"},
            "192.168.105.2/24",
            "192.168.105.1",
        )
        body["run_as"] = {"uid": 65534, "gid": 65534}
        vm = ok(client.post("/v1/vms?wait=60", json=body), 201)
        assert vm["status"] == "running", vm
        status = Path(f"/proc/{vm['pid']}/status").read_text()
        assert "\nUid:\t65534\t65534\t65534\t65534" in status
        assert "\nSeccomp:\t2" in status  # the filter is on
        wait_for(lambda: console_ready(daemon, vm["id"]), 60, "readiness")
        assert wait_for(lambda: ping(netns, "192.168.105.2"), 20, "ping")


def test_kill_and_forced_delete_skip_the_power_down(daemon: E2EDaemon, guest: Guest) -> None:
    """A guest that never booted far enough for ACPI would hold a graceful stop for the whole
    power-down deadline; kill and DELETE ?force=true end qemu at once."""
    with daemon.client(timeout=120) as client:
        vm = ok(client.post("/v1/vms?wait=60", json=vm_body(guest, "vm1")), 201)
        started = time.monotonic()
        killed = ok(client.post(f"/v1/vms/{vm['id']}/kill?wait=30"), 200)
        assert killed["status"] == "stopped"
        assert time.monotonic() - started < 5
        assert not _alive(vm["pid"])
        vm = ok(client.post(f"/v1/vms/{vm['id']}/start?wait=60"), 200)
        started = time.monotonic()
        assert client.delete(f"/v1/vms/{vm['id']}?wait=30&force=true").status_code == 204
        assert time.monotonic() - started < 5
        assert not _alive(vm["pid"])


def test_console_follow_streams_what_the_guest_prints(daemon: E2EDaemon, guest: Guest) -> None:
    with daemon.client(timeout=120) as client:
        vm = ok(client.post("/v1/vms?wait=60", json=vm_body(guest, "vm1")), 201)
        seen = ""
        started = time.monotonic()
        with client.stream("GET", f"/v1/vms/{vm['id']}/console?follow=true&tail=1") as r:
            assert r.status_code == 200
            for chunk in r.iter_text():
                seen += chunk
                if "KVT-READY" in seen or time.monotonic() - started > 60:
                    break
        ready = parse_ready(seen)
        assert ready is not None and ready.address == "10.0.2.15"
