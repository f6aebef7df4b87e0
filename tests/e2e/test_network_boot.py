"""Boot from the network (`boot.network`) through the real daemon, under TCG: the VM has no
kernel and no disk; SeaBIOS runs its NIC's iPXE option ROM, which asks the VM's managed
network for an address by DHCP. Proven: qemu got `bootindex=0` on that NIC and no -kernel or
-drive, and the network's dnsmasq leased the NIC's fixed address to its MAC (DISCOVER, OFFER,
REQUEST, ACK: traffic both ways through the tap). kvmnetd's DHCP names no boot file, so iPXE
then gives up; a whole PXE boot with a boot file is proven in the kernel tier
(tests/kernel/nested/test_vhost_daemon.py, where the guest's traffic goes through vhost-net).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.helpers import E2EDaemon, ok, running_daemon, wait_for
from tests.netns_tools import throwaway_netns

FIXED_IP = "10.97.0.50"


@pytest.fixture
def daemon(request: pytest.FixtureRequest) -> Iterator[E2EDaemon]:
    workdir = Path(tempfile.mkdtemp(prefix="kvt-", dir="/tmp"))  # short QMP socket paths
    workdir.chmod(0o755)  # the unprivileged qemu reaches its run directory below
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        ns = stack.enter_context(throwaway_netns())
        yield stack.enter_context(running_daemon(ns, workdir / "daemon", request))


def test_a_network_booted_vm_gets_its_fixed_address_from_its_network(
    daemon: E2EDaemon,
) -> None:
    with daemon.client(timeout=60) as client:
        ok(client.post("/v1/bridges?wait=10", json={"name": "br0"}), 201)
        network = {"name": "pxe0", "bridge": "br0", "subnet": "10.97.0.0/24"}
        ok(client.post("/v1/networks?wait=10", json=network), 201)
        body = {
            "name": "pxe",
            "memory_mib": 64,
            "boot": {"network": True},
            "nics": [{"backend": "bridge", "bridge": "br0", "ipv4": FIXED_IP}],
        }
        started = time.monotonic()
        vm = ok(client.post("/v1/vms?wait=60", json=body), 201)
        assert vm["boot"]["network"] is True and vm["boot"]["kernel"] is None
        argv = Path(f"/proc/{vm['pid']}/cmdline").read_bytes().decode().split("\0")
        assert "-kernel" not in argv and "-drive" not in argv
        devices = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-device"]
        assert [d for d in devices if "bootindex=0" in d] == [
            d for d in devices if d.startswith("virtio-net-pci,")
        ]
        mac = vm["nics"][0]["mac"]

        def leased() -> dict[str, object] | None:
            leases = ok(client.get("/v1/networks/pxe0/leases"), 200)
            return next((x for x in leases if x["mac"] == mac), None)

        lease = wait_for(leased, 60, "iPXE's DHCP lease")
        print(f"\nnetwork boot: POST to iPXE's lease {time.monotonic() - started:.1f} s")
        assert (lease["ip"], lease["vm_id"], lease["fixed"]) == (FIXED_IP, vm["id"], True)
        gone = client.delete(f"/v1/vms/{vm['id']}?force=true&wait=30")
        assert gone.status_code == 204, gone.text
