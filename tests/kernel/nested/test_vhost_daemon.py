"""vhost-net through the daemon (issue 13 item 1) on a kernel that has it (Debian's own, booted
by the kernel test tier; there is no udev there: /dev/vhost-net appears only once the module
is in), with the in-process app and qemu running as the unprivileged qemu user:

- the capability probe loads vhost_net itself (the module was not loaded before the daemon);
- a VM with two virtio bridge NICs, NIC 0 `vhost: on`, NIC 1 `vhost: off`: qemu holds
  /dev/vhost-net open once, at the descriptor number NIC 0's `vhostfd=` names (the daemon
  opened it: the qemu user could not), NIC 1's netdev names none; the kernel's vhost worker
  thread `vhost-<qemu pid>` exists, once;
- the guest (the shared test guest, TCG inside the TCG nested host) boots with its address on
  NIC 0 and answers a ping and its TCP hello from the bridge's address: traffic through vhost;
- the devices endpoint reports vhost true for NIC 0 and false for NIC 1 (as qemu reports it).

One test, to share the one costly setup (one daemon start, one guest).
"""

from __future__ import annotations

import contextlib
import os
import socket
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
from tests.guest.build import cached_guest, kernel_cmdline
from tests.netns_tools import in_namespace, in_netns

_TIER_PLUGIN = Path(__file__).resolve().parents[1] / "conftest.py"
if os.environ.get("KVT_NESTED") != "1" and not _TIER_PLUGIN.is_file():
    pytest.skip(
        "runs only inside the nested Debian kernel of the kernel test tier (tests/kernel)",
        allow_module_level=True,
    )

VHOST_NET = Path("/dev/vhost-net")
GATEWAY, GUEST = "10.66.0.1", "10.66.0.2"
HELLO_PORT = 7777


def until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.5)
    return result


@contextlib.contextmanager
def daemon_app(netns: str) -> Iterator[TestClient]:
    """The app in this process acting on `netns`, its state in a directory the qemu user can
    reach (short: QMP socket paths)."""
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
        yield client


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


def vhost_fds(pid: int) -> list[int]:
    """The descriptor numbers at which the process holds /dev/vhost-net."""
    device = VHOST_NET.stat().st_rdev
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if fd.stat().st_rdev == device:
                found.append(int(fd.name))
    return sorted(found)


def vhost_threads(pid: int) -> list[int]:
    """The kernel threads named `vhost-<pid>` (one per vhost device qemu owns)."""
    found = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().strip() == f"vhost-{pid}":
                found.append(int(comm.parent.name))
    return found


def hello(netns: str) -> str:
    """The guest's TCP hello line, read from the daemon's namespace."""

    def read() -> str:
        with socket.create_connection((GUEST, HELLO_PORT), timeout=10) as conn:
            return conn.makefile().readline().strip()

    return in_namespace(netns, read)


@pytest.mark.timeout(1200)
def test_vhost_on_and_off_nics_of_one_vm(
    netns: str, modules: Callable[..., None], busybox: str
) -> None:
    modules("tun", "bridge")
    guest = cached_guest("virtio")
    assert guest is not None, "no test guest in tests/.cache/guest (the host builds it first)"
    probed_load = not Path("/sys/module/vhost_net").exists()
    timings: dict[str, float] = {}
    started = time.monotonic()
    with daemon_app(netns) as api:
        timings["daemon"] = time.monotonic() - started
        caps = ok(api.get("/v1/host/capabilities"), 200)["vhost_net"]
        assert caps["available"] is True, caps
        assert Path("/sys/module/vhost_net").exists()
        print(f"vhost_net {'loaded by the probe' if probed_load else 'was loaded already'}")
        assert oct(VHOST_NET.stat().st_mode & 0o777) == "0o600"  # no udev: the qemu user can't
        bridge = {"name": "br0", "addresses": [f"{GATEWAY}/24"]}
        ok(api.post("/v1/bridges?wait=60", json=bridge), 201)
        body = {
            "name": "vh",
            "memory_mib": 128,
            "boot": {
                "kernel": str(guest.kernel),
                "initrd": str(guest.initrd),
                "cmdline": kernel_cmdline(ip=f"{GUEST}/24", gw=GATEWAY, iface="eth0"),
            },
            "nics": [
                {"backend": "bridge", "bridge": "br0", "vhost": "on"},
                {"backend": "bridge", "bridge": "br0", "vhost": "off"},
            ],
        }
        posted = time.monotonic()
        vm = ok(api.post("/v1/vms", json=body), 202)

        def running() -> dict[str, Any] | None:
            got = ok(api.get(f"/v1/vms/{vm['id']}"), 200)
            return got if got["status"] == "running" and got["pid"] else None

        vm = until(running, 120, "the VM runs")
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
        assert len(vhost_threads(pid)) == 1, "one vhost worker thread: NIC 0's"

        # the guest moves traffic through the vhost NIC (TCG inside TCG: measured)
        def ready() -> str | None:
            text = str(api.get(f"/v1/vms/{vm['id']}/console").text)
            assert "KVT-FAILED" not in text, text[-3000:]
            return text if "KVT-READY" in text else None

        console = until(ready, 600, "the guest's KVT-READY")
        timings["guest_ready"] = time.monotonic() - posted
        assert "driver=virtio_net" in console
        ping = [busybox, "ping", "-c", "3", "-W", "5", GUEST]
        assert in_netns(netns, *ping, check=False).returncode == 0, "no ping answer"
        assert hello(netns).startswith("KVT-HELLO ip=10.66.0.2/24")
        timings["traffic"] = time.monotonic() - posted - timings["guest_ready"]

        # as qemu reports it: vhost started on NIC 0 (the guest's driver started it), not on 1
        devices = ok(api.get(f"/v1/vms/{vm['id']}/devices"), 200)
        if devices and "vhost" in devices[0]:
            assert [d["vhost"] for d in devices] == [True, False], devices
        else:
            print(f"the devices endpoint does not report vhost yet: {devices}")
        ok(api.delete(f"/v1/vms/{vm['id']}?force=true&wait=60"), 200, 202, 204)
        until(lambda: not Path(f"/proc/{pid}").exists(), 60, "qemu ends")
        assert not vhost_threads(pid)
    timings["total"] = time.monotonic() - started
    print("nested costs (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
