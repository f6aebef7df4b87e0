"""vhost-net per NIC (issue 13 item 1) on this machine's real kernel, with a real qemu (SeaBIOS
over an empty disk): the capability probe's answer (it tries to load vhost_net where
/dev/vhost-net is missing), `vhost: on` refused with the probe's reason where it does not work
(409, nothing stored: neither a VM nor a NIC added to one), and `auto` running qemu with
vhost=off and no vhostfd there; where the host has vhost-net, `on` and `auto` hand qemu
/dev/vhost-net descriptors (the kernel tier proves that side: tests/kernel/nested/
test_vhost_daemon.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.api.test_isolation_api import problem
from tests.api.test_links_api import make_bridge
from tests.api.vm_lab import Lab, create, settled, wait_vm
from tests.api.vm_lab import lab as lab

VHOST_NET = Path("/dev/vhost-net")


def netdevs(pid: int) -> list[str]:
    """qemu's -netdev values, as /proc/PID/cmdline shows them."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return [a.decode() for a in argv if a.startswith(b"tap,id=net")]


def holds_vhost_net(pid: int) -> int:
    """How many descriptors of /dev/vhost-net qemu holds."""
    if not VHOST_NET.exists():
        return 0
    device = VHOST_NET.stat().st_rdev
    held = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            held += fd.stat().st_rdev == device
        except OSError:
            continue
    return held


@pytest.mark.timeout(180)
def test_vhost_follows_what_the_probe_found(lab: Lab) -> None:
    with lab.app() as client:
        probed: dict[str, Any] = client.get("/v1/host/capabilities").json()["vhost_net"]
        assert (probed["kernel_config"], probed["module"]) == ("CONFIG_VHOST_NET", "vhost_net")
        assert probed["available"] == (VHOST_NET.exists() and os.access(VHOST_NET, os.R_OK))
        make_bridge(client)
        bridge_nic = {"backend": "bridge", "bridge": "br0"}
        if not probed["available"]:
            # the probe tried to load the module: its reason says why that failed
            reason = probed["reason"]
            assert "/dev/vhost-net" in reason and "CONFIG_VHOST_NET" in reason, reason
            assert "modprobe" in reason or "modules" in reason, reason
            on = {**bridge_nic, "vhost": "on"}
            r = client.post("/v1/vms", json={"name": "v", "boot": {"disk": "/x"}, "nics": [on]})
            body = problem(r, 409, "host-lacks-feature")
            (missing,) = body["missing_features"]
            assert missing["feature"] == "vhost_net" and missing["reason"] == reason
            assert reason in body["detail"]
            assert client.get("/v1/vms").json()["items"] == []  # nothing stored
        # auto: vhost-net exactly where the probe found it working
        vm = create(lab, client, nics=[bridge_nic, {**bridge_nic, "vhost": "off"}])
        if not probed["available"]:
            r = client.post(f"/v1/vms/{vm['id']}/nics", json={**bridge_nic, "vhost": "on"})
            problem(r, 409, "host-lacks-feature")
            assert len(client.get(f"/v1/vms/{vm['id']}").json()["nics"]) == 2
        vm = wait_vm(client, vm["id"], settled("running"), timeout=60)
        assert [n["vhost"] for n in vm["nics"]] == ["auto", "off"]
        auto, off = netdevs(vm["pid"])
        assert "vhost=off" in off and "vhostfd" not in off
        if probed["available"]:
            assert "vhost=on" in auto and ",vhostfd=" in auto, auto
            assert holds_vhost_net(vm["pid"]) == 1
        else:
            assert "vhost=off" in auto and "vhostfd" not in auto, auto
            assert holds_vhost_net(vm["pid"]) == 0
        r = client.delete(f"/v1/vms/{vm['id']}?force=true&wait=30")
        assert r.status_code in (202, 204), r.text
