"""vhost-net through the daemon (issue 13 item 1) on a kernel that has it (Debian's own, booted
by the kernel test tier; there is no udev there: /dev/vhost-net appears only once the module
is in, 0600 root), with the in-process app and qemu running as the unprivileged qemu user:

- the capability probe loads vhost_net itself (when the module was not loaded before);
- a VM with two virtio bridge NICs, NIC 0 `vhost: on`, NIC 1 `vhost: off`: qemu holds
  /dev/vhost-net open once, at the descriptor number NIC 0's `vhostfd=` names (the daemon
  opened it: the qemu user could not), NIC 1's netdev names none; each NIC's `fd=` is a tap
  descriptor; the kernel's vhost worker thread `vhost-<qemu pid>` exists, once (qemu's
  VHOST_SET_OWNER at netdev init makes it), and goes with qemu;
- a guest moving traffic through vhost-net: the VM boots from the network (`boot.network`),
  so its guest is NIC 0's iPXE option ROM (a Linux guest under TCG inside this TCG host took
  ~900 s to boot, tests/kernel/README.md; iPXE gets its lease in ~20 s). A PXE server of the
  test's own on the bridge (tests/pxe.py) leases it an address and hands it a boot file that
  never ends, so its NIC stays open; then qemu reports vhost started on NIC 0 (the devices
  endpoint's `vhost`: true, as x-query-virtio-status says), the guest answers ping from the
  host, and the vhost worker thread has run (its schedstat run time grew with the pings:
  the kernel, not qemu, moved those packets); NIC 1, which iPXE never opened, reports null;
- a third NIC with `vhost: on` hot-plugged into the running qemu (its tap and /dev/vhost-net
  descriptors passed by QMP getfd, netdev_add's `vhostfd`): a second /dev/vhost-net
  descriptor and a second worker thread.

One test, one daemon start.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.db_template import seed_state_dir
from tests.pxe import HTTP_PORT, pxe_server
from tests.vhost_proc import VHOST_NET, vhost_fds, vhost_threads

_TIER_PLUGIN = Path(__file__).resolve().parents[1] / "conftest.py"
if os.environ.get("KVT_NESTED") != "1" and not _TIER_PLUGIN.is_file():
    pytest.skip(
        "runs only inside the nested Debian kernel of the kernel test tier (tests/kernel)",
        allow_module_level=True,
    )

GATEWAY = "10.66.0.1"


def until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.5)
    return result


@contextlib.contextmanager
def daemon_app(netns: str) -> Iterator[tuple[TestClient, Path]]:
    """The app in this process acting on `netns`, and its base directory, which the qemu user
    can reach (short: QMP socket paths)."""
    base = Path(tempfile.mkdtemp(prefix="kvt-vh-", dir="/tmp"))
    base.chmod(0o755)
    settings = Settings(
        state_dir=seed_state_dir(base / "state"),
        run_dir=base / "run",
        listen="",
        reconcile_interval=30,
        probe_kernel=base / "no-kernel",
    )
    app = create_app(settings, token="test-token", host_netns=netns)
    with TestClient(app, base_url="http://kvmnetd") as client:
        assert app.state.supervisor.ready.wait(120)
        yield client, base


def ok(r: Any, *statuses: int) -> Any:
    assert r.status_code in statuses, f"{r.request.method} {r.request.url}: {r.text}"
    return r.json() if r.content else None


def option(netdev: str, key: str) -> str | None:
    """The value of `key=` in a -netdev option string."""
    for part in netdev.split(","):
        name, _, value = part.partition("=")
        if name == key:
            return value
    return None


def run_time_ns(thread: int) -> int:
    """How long the thread has run on a CPU (ns; /proc/TID/schedstat's first field)."""
    return int(Path(f"/proc/{thread}/schedstat").read_text().split()[0])


def ping(netns: str, busybox: str, address: str, count: int) -> str:
    """busybox ping's summary line ("round-trip min/avg/max = ...") after `count` echoes,
    each answered (else AssertionError with its output)."""
    argv = ["ip", "netns", "exec", netns, busybox, "ping", "-c", str(count), "-i", "0.2"]
    done = subprocess.run(
        [*argv, "-W", "5", address], capture_output=True, text=True, timeout=120, check=False
    )
    assert f"{count} packets received" in done.stdout, done.stdout + done.stderr
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.timeout(1200)
def test_vhost_on_and_off_nics_of_one_vm(
    netns: str, modules: Callable[..., None], busybox: str
) -> None:
    modules("tun", "bridge")
    probed_load = not Path("/sys/module/vhost_net").exists()
    timings: dict[str, float] = {}
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        api, base = stack.enter_context(daemon_app(netns))
        timings["daemon_start"] = time.monotonic() - started
        caps = ok(api.get("/v1/host/capabilities"), 200)["vhost_net"]
        assert caps["available"] is True, caps
        assert Path("/sys/module/vhost_net").exists()
        print(f"vhost_net {'loaded by the probe' if probed_load else 'was loaded already'}")
        assert oct(VHOST_NET.stat().st_mode & 0o777) == "0o600"  # no udev: the qemu user can't
        bridge = {"name": "br0", "addresses": [f"{GATEWAY}/24"]}
        ok(api.post("/v1/bridges?wait=60", json=bridge), 201)
        script = f"#!ipxe\nchain http://{GATEWAY}:{HTTP_PORT}/hold\n"
        pool = ("10.66.0.10", "10.66.0.50")
        pxe = stack.enter_context(pxe_server(netns, "br0", GATEWAY, pool, script, base / "pxe"))
        body = {
            "name": "vh",
            "memory_mib": 64,
            "boot": {"network": True},  # NIC 0's iPXE: the guest (see above)
            "nics": [
                {"backend": "bridge", "bridge": "br0", "vhost": "on"},
                {"backend": "bridge", "bridge": "br0", "vhost": "off"},
            ],
        }
        posted = time.monotonic()
        vm = ok(api.post("/v1/vms", json=body), 202)

        def running() -> dict[str, Any] | None:
            got: dict[str, Any] = ok(api.get(f"/v1/vms/{vm['id']}"), 200)
            why = f"{got['status_reason']}; exit {got['exit_code']}: {got['last_output']}"
            assert got["last_output"] is None and got["exit_code"] is None, why
            return got if got["status"] == "running" and got["pid"] else None

        vm = until(running, 120, "the VM runs")
        timings["vm_running"] = time.monotonic() - posted
        pid = vm["pid"]
        uid = int(Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0])
        assert uid != 0, "qemu runs as the unprivileged qemu user"
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        on, off = [a for a in argv if a.startswith("tap,id=net")]
        assert option(on, "vhost") == "on" and option(off, "vhost") == "off", (on, off)
        assert option(off, "vhostfd") is None and option(off, "vhostfds") is None
        vhostfd = option(on, "vhostfd")
        assert vhostfd is not None, on
        # per NIC: NIC 0's vhostfd is the one /dev/vhost-net descriptor qemu holds; NIC 1 none
        assert vhost_fds(pid) == [int(vhostfd)]
        for netdev in (on, off):  # each NIC's tap descriptor is a /dev/net/tun one
            tap_fd = option(netdev, "fd")
            assert tap_fd is not None
            assert os.readlink(f"/proc/{pid}/fd/{tap_fd}") == "/dev/net/tun"
        (worker,) = vhost_threads(pid)  # one vhost worker thread: NIC 0's

        # the guest (NIC 0's iPXE) gets its address and holds its NIC open on the boot file
        mac = vm["nics"][0]["mac"]
        address = until(lambda: pxe.leased(mac), 300, "iPXE's DHCP lease on NIC 0")
        timings["guest_lease"] = time.monotonic() - posted
        until(lambda: any(r["path"] == "/hold" for r in pxe.requests()), 120, "the boot file")
        devices = ok(api.get(f"/v1/vms/{vm['id']}/devices"), 200)
        # as qemu reports it (x-query-virtio-status): started on NIC 0, which iPXE drives;
        # NIC 1's device was never started by a driver (null, not false)
        assert [(d["id"], d["vhost"]) for d in devices] == [("nic0", True), ("nic1", None)]
        before = run_time_ns(worker)
        summary = ping(netns, busybox, address, 10)
        assert run_time_ns(worker) > before, "the vhost worker moved the echoes"
        print(f"ping {address} through vhost-net (iPXE under TCG inside TCG): {summary}")

        # hot-plug (QMP getfd, then netdev_add with vhostfd): a third NIC with vhost on
        nic = {"backend": "bridge", "bridge": "br0", "vhost": "on"}
        plugged = time.monotonic()
        ok(api.post(f"/v1/vms/{vm['id']}/nics?wait=120", json=nic), 201)
        until(lambda: len(vhost_fds(pid)) == 2, 60, "qemu holds the plugged NIC's vhost fd")
        assert len(vhost_threads(pid)) == 2, "a second vhost worker: the plugged NIC's"
        timings["hotplug"] = time.monotonic() - plugged
        assert ok(api.get(f"/v1/vms/{vm['id']}"), 200)["status_reason"] is None

        # no guest driver started the plugged device: qemu has not started its vhost
        devices = ok(api.get(f"/v1/vms/{vm['id']}/devices"), 200)
        assert [(d["id"], d["vhost"]) for d in devices] == [
            ("nic0", True),
            ("nic1", None),
            ("nic2", None),
        ]
        ok(api.delete(f"/v1/vms/{vm['id']}?force=true&wait=60"), 200, 202, 204)
        until(lambda: not Path(f"/proc/{pid}").exists(), 60, "qemu ends")
        assert not vhost_threads(pid)
    timings["total"] = time.monotonic() - started
    print("nested costs (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
