"""SR-IOV through the daemon on Debian's kernel with QEMU 10's emulated igb (one test, one
daemon start): num_vfs set through the API and the pool read back; a VM with an sriov NIC
started (qemu 7.2 under TCG, SeaBIOS over an empty disk: no guest kernel needed to hold the
device); its VF's MAC, VLAN, spoof check and trust read back through netlink on the PF, the
VF bound to vfio-pci in sysfs, its /dev/vfio/<group> the qemu user's and held open by qemu,
qemu's real command line naming the VF and its RLIMIT_MEMLOCK raised; the pool shows the VF
held; a count change refused while it is; the VM deleted and the VF free again (igbvf, MAC and
VLAN restored, no claim). The daemon works in the nested host's root namespace, where the PF
is (the PF's netdev cannot follow a test namespace: sysfs would no longer name it)."""

from __future__ import annotations

import contextlib
import os
import pwd
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from pyroute2 import IPRoute

from app.domain.sriov import FREE_CONFIG, VfConfig
from app.host.sriov import vf_configs
from app.main import create_app
from app.settings import Settings

MAC = "52:54:00:5a:00:07"


@contextlib.contextmanager
def root_daemon(settings: Settings) -> Iterator[TestClient]:
    """The app in this process acting on the nested host's root namespace."""
    app = create_app(settings, token="test-token")
    with TestClient(app, base_url="http://kvmnetd") as client:
        assert app.state.supervisor.ready.wait(60)
        yield client


def ok(r: Any, status: int) -> Any:
    assert r.status_code == status, r.text
    return r.json()


def until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def driver_of(address: str) -> str | None:
    with contextlib.suppress(OSError):
        return os.readlink(f"/sys/bus/pci/devices/{address}/driver").rsplit("/", 1)[-1]
    return None


def held_paths(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            found.add(os.readlink(fd))
    return found


def memlock(pid: int) -> str:
    lines = Path(f"/proc/{pid}/limits").read_text().splitlines()
    return next(line for line in lines if line.startswith("Max locked memory"))


def test_vf_pool_nic_on_a_vf_and_back(sriov_pf: str, settings: Settings) -> None:
    pf = sriov_pf
    # a short run directory: qemu's QMP socket path must fit sun_path (107 bytes)
    run_dir = Path(tempfile.mkdtemp(dir="/run"))
    run_dir.chmod(0o755)  # the qemu user walks down to its VM's directory
    settings = settings.model_copy(update={"run_dir": run_dir})
    with root_daemon(settings) as api:
        caps = ok(api.get("/v1/host/capabilities"), 200)
        assert caps["sriov"]["available"] is True, caps["sriov"]
        shown = ok(api.put(f"/v1/host/sriov/{pf}", json={"num_vfs": 2}), 200)
        assert (shown["num_vfs"], shown["free_vfs"], shown["driver"]) == (2, 2, "igb"), shown
        (listed,) = ok(api.get("/v1/host/sriov"), 200)
        assert listed["name"] == pf and listed["total_vfs"] >= 2
        assert [(v["index"], v["driver"], v["mac"], v["vm_id"]) for v in listed["vfs"]] == [
            (0, "igbvf", FREE_CONFIG.mac, None),
            (1, "igbvf", FREE_CONFIG.mac, None),
        ]

        nic = {"backend": "sriov", "pf": pf, "mac": MAC, "vf_vlan": 100, "trust": True}
        body = {"name": "sr", "memory_mib": 64, "boot": {"disk": "/dev/null"}, "nics": [nic]}
        vm = ok(api.post("/v1/vms?wait=90", json=body), 201)
        assert vm["status"] == "running", (vm["status_reason"], vm.get("output"))
        (shown_nic,) = vm["nics"]
        assert (shown_nic["model"], shown_nic["pf"], shown_nic["vf_index"]) == ("vfio-pci", pf, 0)
        assert (shown_nic["vf_vlan"], shown_nic["spoof_check"], shown_nic["trust"]) == (
            100,
            True,
            True,
        )
        address = shown_nic["vf"]
        with IPRoute() as ipr:
            assert vf_configs(ipr, pf)[0] == VfConfig(MAC, 100, True, True)
        assert driver_of(address) == "vfio-pci"
        group = os.readlink(f"/sys/bus/pci/devices/{address}/iommu_group").rsplit("/", 1)[-1]
        node = Path(f"/dev/vfio/{group}")
        qemu_user = pwd.getpwnam(settings.qemu_user or "")
        assert node.stat().st_uid == qemu_user.pw_uid
        pid = vm["pid"]
        assert str(node) in held_paths(pid), "qemu does not hold the VF's group"
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        assert f"vfio-pci,host={address},id=nic0" in argv, argv
        assert not any(a.startswith("tap,") for a in argv), argv
        assert int(memlock(pid).split()[3]) == (64 << 20) + (1 << 30), memlock(pid)

        (device,) = ok(api.get(f"/v1/vms/{vm['id']}/devices"), 200)  # qemu's own report
        assert (device["id"], device["type"], device["host"]) == ("nic0", "vfio-pci", address)

        (listed,) = ok(api.get("/v1/host/sriov"), 200)
        held = listed["vfs"][0]
        assert (held["vm_id"], held["nic_id"], held["driver"]) == (
            vm["id"],
            shown_nic["id"],
            "vfio-pci",
        )
        assert (held["mac"], held["vlan"], held["trust"], listed["free_vfs"]) == (MAC, 100, True, 1)
        r = api.put(f"/v1/host/sriov/{pf}", json={"num_vfs": 3})
        assert r.status_code == 409 and "held by VM NICs" in r.json()["detail"], r.text

        assert api.delete(f"/v1/vms/{vm['id']}?wait=60").status_code == 204
        assert not Path(f"/proc/{pid}").exists()
        assert driver_of(address) == "igbvf"
        with IPRoute() as ipr:
            assert vf_configs(ipr, pf)[0] == FREE_CONFIG
        (listed,) = ok(api.get("/v1/host/sriov"), 200)
        assert listed["free_vfs"] == 2 and listed["vfs"][0]["vm_id"] is None, listed
        assert ok(api.put(f"/v1/host/sriov/{pf}", json={"num_vfs": 0}), 200)["vfs"] == []
