"""NIC hotplug as the guest sees it (issue 13 item 6): one TCG guest (the shared test guest
plus a small overlay hook), the real daemon, two managed networks.

The guest boots on nat0 (br0). Its hook waits for a second interface, asks DHCP for an
address there and prints `KVT-HOTPLUG <n> ip=...`, then `KVT-UNPLUGGED <n>` when the
interface goes, and waits for the next one. Proven, in order:
- POST /v1/vms/{id}/nics (bridge br1, a fixed address on nat1): the guest sees eth1, gets
  exactly that address by DHCP (the NIC's static lease), and answers ping from the host
  namespace through br1 (the time from the POST to the first answer is printed);
- a daemon restart re-adopts qemu with the hot-plugged NIC (same pid, no restart pending,
  qemu's own device list through QMP still has nic1), and the guest still answers;
- the NIC's tap deleted by hand is repaired by re-plugging: the guest sees the interface go
  and come back, and answers again;
- DELETE /v1/vms/{id}/nics/1: the guest sees the interface go, qemu's device and the tap are
  gone, and so is the NIC's static lease;
- a multi-queue NIC's tap deleted by hand is reported, not re-plugged: qemu runs on.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.domain.pcie import SPARE_ROOT_PORTS
from tests.e2e.helpers import E2EDaemon, ok, overlay_initrd, running_daemon, wait_for
from tests.guest.build import build_guest, kernel_cmdline
from tests.guest.console import parse_ready
from tests.netns_tools import ip, links, throwaway_netns

HOT_IP = "10.94.0.50"

# after READY: every second interface that appears gets DHCP; its arrival and departure are
# printed (n counts them), forever
HOOK = r"""
n=0
while :; do
	while [ ! -e /sys/class/net/eth1 ]; do sleep 0.2; done
	n=$((n + 1))
	ip link set eth1 up
	udhcpc -i eth1 -s /etc/udhcpc.sh -t 8 -T 2 -n -q >/run/udhcpc1.log 2>&1
	say "KVT-HOTPLUG $n ip=$(ip -o -4 addr show dev eth1 | awk '{print $4; exit}')"
	while [ -e /sys/class/net/eth1 ]; do sleep 0.2; done
	say "KVT-UNPLUGGED $n"
done &
shell_forever
"""


def _ping(ns: str, address: str) -> bool:
    argv = ["ping"] if shutil.which("ping") else ["busybox", "ping"]
    done = subprocess.run(
        ["ip", "netns", "exec", ns, *argv, "-c", "1", "-W", "1", address],
        capture_output=True,
        check=False,
        timeout=10,
    )
    return done.returncode == 0


@pytest.fixture
def host(request: pytest.FixtureRequest) -> Iterator[tuple[str, Path, E2EDaemon, Path]]:
    workdir = Path(tempfile.mkdtemp(prefix="kvt-", dir="/tmp"))  # short QMP socket paths
    workdir.chmod(0o755)
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        ns = stack.enter_context(throwaway_netns())
        daemon = stack.enter_context(
            running_daemon(ns, workdir / "daemon", request, reconcile_interval=3)
        )
        yield ns, workdir, daemon, workdir / "daemon"


def _guest_on_nat0(client: Any, workdir: Path, name: str, machine: str) -> dict[str, Any]:
    """Managed networks nat0 (br0) and nat1 (br1), and a running VM of `machine` booting the
    test guest with HOOK, its one NIC on br0 (DHCP)."""
    guest = build_guest("virtio")
    initrd = overlay_initrd(guest, HOOK, {}, workdir / "hotplug.initrd")
    for index in (0, 1):
        ok(client.post("/v1/bridges?wait=10", json={"name": f"br{index}"}), 201)
        network = {"name": f"nat{index}", "bridge": f"br{index}"}
        network["subnet"] = f"10.9{3 + index}.0.0/24"
        ok(client.post("/v1/networks?wait=10", json=network), 201)
    body = {
        "name": name,
        "machine": machine,
        "memory_mib": 256,
        "boot": {
            "kernel": str(guest.kernel),
            "initrd": str(initrd),
            "cmdline": kernel_cmdline(dhcp=True),
        },
        "nics": [{"backend": "bridge", "bridge": "br0"}],
    }
    return dict(ok(client.post("/v1/vms?wait=60", json=body), 201))


def _vm(client: Any, vm_id: str) -> dict[str, Any]:
    return dict(ok(client.get(f"/v1/vms/{vm_id}"), 200))


def test_the_guest_sees_a_nic_plugged_kept_repaired_and_unplugged(
    host: tuple[str, Path, E2EDaemon, Path],
) -> None:
    ns, workdir, daemon, daemon_dir = host
    with daemon.client(timeout=60) as client:
        vm = _guest_on_nat0(client, workdir, "hot", "pc")

        def console() -> str:
            return str(client.get(f"/v1/vms/{vm['id']}/console").text)

        wait_for(lambda: parse_ready(console()), 120, "guest ready")

        # plugged: the guest's new interface gets its fixed address and answers
        started = time.monotonic()
        nic_in = {"backend": "bridge", "bridge": "br1", "ipv4": HOT_IP}
        nic = ok(client.post(f"/v1/vms/{vm['id']}/nics?wait=30", json=nic_in), 201)
        plugged_at = time.monotonic()
        wait_for(lambda: _ping(ns, HOT_IP) or None, 90, "the hot-plugged NIC answers")
        answered = time.monotonic()
        print(
            f"\nhotplug: POST to settled {plugged_at - started:.1f} s, to the guest answering "
            f"ping on its new NIC (DHCP included) {answered - started:.1f} s"
        )
        # the guest answers once udhcpc set the address, a moment before its hook says so
        wait_for(lambda: f"KVT-HOTPLUG 1 ip={HOT_IP}/24" in console() or None, 10, "the hook")
        assert links(ns)[nic["tap_name"]].master == "br1"
        pid = _vm(client, vm["id"])["pid"]

    daemon.kill()  # a daemon restart: qemu runs on with its hot-plugged NIC
    daemon.start()
    with daemon.client(timeout=60) as client:
        wait_for(
            lambda: (v := _vm(client, vm["id"]))["observed_generation"] == v["generation"] or None,
            30,
            "re-adopted",
        )
        after = _vm(client, vm["id"])
        assert after["pid"] == pid and after["status"] == "running", after
        assert after["restart_pending"] is False and after["status_reason"] is None, after
        devices = ok(client.get(f"/v1/vms/{vm['id']}/devices"), 200)
        assert [(d["id"], d["mac"]) for d in devices][1] == ("nic1", nic["mac"])
        assert _ping(ns, HOT_IP)

        # its tap deleted by hand: re-plugged (the guest sees it go and come back)
        ip(ns, "link", "del", nic["tap_name"])
        wait_for(lambda: "KVT-HOTPLUG 2 " in console() or None, 90, "re-plugged")
        wait_for(lambda: _ping(ns, HOT_IP) or None, 60, "the re-plugged NIC answers")
        assert "KVT-UNPLUGGED 1" in console()
        assert links(ns)[nic["tap_name"]].master == "br1"
        wait_for(lambda: _vm(client, vm["id"])["status_reason"] is None or None, 20, "repaired")

        # unplugged: gone in the guest, in qemu, in the kernel and in dnsmasq's static leases
        gone = ok(client.delete(f"/v1/vms/{vm['id']}/nics/{nic['id']}?wait=60"), 200)
        assert [n["index"] for n in gone["nics"]] == [0]
        assert gone["status_reason"] is None, gone
        wait_for(lambda: "KVT-UNPLUGGED 2" in console() or None, 30, "unplugged in the guest")
        devices = ok(client.get(f"/v1/vms/{vm['id']}/devices"), 200)
        assert [d["id"] for d in devices] == ["nic0"]
        assert nic["tap_name"] not in links(ns)
        hosts = list((daemon_dir / "run" / "networks").glob("*/dhcp-hosts"))
        assert hosts and not any(nic["mac"] in h.read_text() for h in hosts)
        assert not _ping(ns, HOT_IP)

        # a multi-queue NIC's tap deleted by hand: not re-plugged (unplugging it would make
        # qemu 7.2 abort, virtio_net_set_queue_pairs), said on the VM, and the VM runs on
        queues = {"backend": "bridge", "bridge": "br1", "queues": 2}
        multi = ok(client.post(f"/v1/vms/{vm['id']}/nics?wait=30", json=queues), 201)
        wait_for(lambda: "KVT-HOTPLUG 3 " in console() or None, 90, "multi-queue NIC plugged")
        ip(ns, "link", "del", multi["tap_name"])
        reason = wait_for(
            lambda: (r := _vm(client, vm["id"])["status_reason"]) and multi["tap_name"] in r and r,
            30,
            "the lost tap reported",
        )
        assert "one queue pair" in reason, reason
        time.sleep(8)  # passes of the VM worker (reconcile_interval=3) that must not re-plug
        kept = _vm(client, vm["id"])
        assert (kept["status"], kept["pid"]) == ("running", pid), kept
        assert "KVT-UNPLUGGED 3" not in console()


def test_a_q35_guest_sees_a_nic_plugged_on_a_root_port_and_unplugged(
    host: tuple[str, Path, E2EDaemon, Path],
) -> None:
    """q35: a NIC added while the guest runs goes on a spare PCIe root port, the guest's
    pciehp driver sees it (the interface appears, gets its fixed address, answers ping), and
    DELETE presses the slot's attention button: the guest lets the device go (PCIe native
    hotplug, QEMU's docs/pcie.txt) and qemu drops it."""
    ns, workdir, daemon, _ = host
    with daemon.client(timeout=60) as client:
        vm = _guest_on_nat0(client, workdir, "hot35", "q35")

        def console() -> str:
            return str(client.get(f"/v1/vms/{vm['id']}/console").text)

        wait_for(lambda: parse_ready(console()), 120, "guest ready")
        started = time.monotonic()
        nic_in = {"backend": "bridge", "bridge": "br1", "ipv4": HOT_IP}
        nic = ok(client.post(f"/v1/vms/{vm['id']}/nics?wait=30", json=nic_in), 201)
        wait_for(lambda: _ping(ns, HOT_IP) or None, 90, "the plugged NIC answers")
        print(f"\nq35 hotplug: POST to the guest answering ping {time.monotonic() - started:.1f} s")
        wait_for(lambda: f"KVT-HOTPLUG 1 ip={HOT_IP}/24" in console() or None, 10, "the hook")

        started = time.monotonic()
        gone = ok(client.delete(f"/v1/vms/{vm['id']}/nics/{nic['id']}?wait=60"), 200)
        assert gone["status_reason"] is None, gone  # released within the unplug timeout
        print(f"q35 unplug: DELETE to released {time.monotonic() - started:.1f} s")
        wait_for(lambda: "KVT-UNPLUGGED 1" in console() or None, 30, "unplugged in the guest")
        devices = ok(client.get(f"/v1/vms/{vm['id']}/devices"), 200)
        assert [d["id"] for d in devices] == ["nic0"]
        assert nic["tap_name"] not in links(ns)
        assert _vm(client, vm["id"])["status"] == "running"

        # the spare ports full: one more NIC waits (no tap made, none taken for "deleted by
        # hand"), and is plugged once a removal frees a port
        more = {"backend": "bridge", "bridge": "br1"}
        spares = [
            ok(client.post(f"/v1/vms/{vm['id']}/nics?wait=30", json=more), 201)
            for _ in range(SPARE_ROOT_PORTS)
        ]
        waiting = ok(client.post(f"/v1/vms/{vm['id']}/nics?wait=30", json=more), 201)
        reason = _vm(client, vm["id"])["status_reason"] or ""
        assert f"NIC {waiting['index']} waits for the VM's next start" in reason, reason
        assert waiting["tap_name"] not in links(ns)
        time.sleep(5)  # passes of the VM worker (reconcile_interval=3): no false alarm
        reason = _vm(client, vm["id"])["status_reason"] or ""
        assert "deleted by hand" not in reason and "waits" in reason, reason
        ok(client.delete(f"/v1/vms/{vm['id']}/nics/{spares[0]['index']}?wait=60"), 200)

        def plugged() -> list[str] | None:
            ids = [d["id"] for d in ok(client.get(f"/v1/vms/{vm['id']}/devices"), 200)]
            return ids if f"nic{waiting['index']}" in ids else None

        ids = wait_for(plugged, 30, "the waiting NIC plugged into the freed port")
        assert f"nic{spares[0]['index']}" not in ids
        wait_for(lambda: _vm(client, vm["id"])["status_reason"] is None or None, 20, "settled")
        assert links(ns)[waiting["tap_name"]].master == "br1"
