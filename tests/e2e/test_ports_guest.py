"""A real TCG guest plugged into a port (the `port` NIC backend) on a flat network, the
network, its subnet and the port made by the `openstack` CLI (the Neutron API over TCP;
physnet1 is the bridge br-phys): the guest gets the port's
fixed address by DHCP (the port's static lease), with the port's MAC, and
talks with its gateway (the host side of the network answers the guest's hello service);
the port's Neutron status goes DOWN -> ACTIVE (qemu holds its tap: carrier) -> DOWN once
the VM is deleted, and the port is free again. One guest boot (the shared test guest)."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import ok, running_daemon, wait_for
from tests.e2e.test_nat_networks import first_line
from tests.e2e.test_neutron_networks import LISTEN, PHYSNETS, admin_token, cli_json
from tests.guest.build import build_guest, kernel_cmdline
from tests.guest.console import parse_ready
from tests.netns_tools import links, throwaway_netns

FIXED = "10.93.0.150"  # inside the allocation pool (all but the gateway): a static lease
MAC = "52:54:00:93:00:50"


def settled(port: dict[str, Any]) -> dict[str, Any] | None:
    return port if port["status"] == "active" else None


def test_guest_on_a_port_gets_its_fixed_address_and_port_status_follows(
    request: pytest.FixtureRequest,
) -> None:
    guest = build_guest("virtio")
    workdir = Path(tempfile.mkdtemp(prefix="kvt-", dir="/tmp"))  # short QMP socket paths
    workdir.chmod(0o755)
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        host = stack.enter_context(throwaway_netns())
        env = {  # the openstack CLI speaks TCP; the flat network is physnet1's bridge
            "KVMNETD_LISTEN": LISTEN,
            "KVMNETD_PHYSICAL_NETWORKS": json.dumps(PHYSNETS),
        }
        daemon = stack.enter_context(running_daemon(host, workdir, request, extra_env=env))
        token = admin_token(daemon)
        with daemon.client(timeout=90) as client:
            # network, subnet and port through the Neutron API, as an operator and Nova would
            cli_json(
                host, token, "network", "create", "--provider-network-type", "flat",
                "--provider-physical-network", "physnet1", "flat1",
            )  # fmt: skip
            cli_json(
                host, token, "subnet", "create", "--network", "flat1",
                "--subnet-range", "10.93.0.0/24", "sub1",
            )  # fmt: skip
            neutron = cli_json(
                host, token, "port", "create", "--network", "flat1",
                "--fixed-ip", f"subnet=sub1,ip-address={FIXED}", "--mac-address", MAC, "p1",
            )  # fmt: skip
            assert neutron["status"] in ("DOWN", "BUILD"), neutron
            made = wait_for(
                lambda: settled(ok(client.get(f"/v1/ports/{neutron['id']}"), 200)), 10, "port"
            )
            assert made["port_status"] == "DOWN" and made["ipv4"] == FIXED, made
            assert links(host)[made["tap"]].master == PHYSNETS["physnet1"]
            vm = {
                "name": "web",
                "memory_mib": 256,
                "boot": {
                    "kernel": str(guest.kernel),
                    "initrd": str(guest.initrd),
                    "cmdline": kernel_cmdline(dhcp=True),
                },
                "nics": [{"backend": "port", "port": "p1"}],
            }
            created = ok(client.post("/v1/vms?wait=60", json=vm), 201)
            nic = created["nics"][0]
            assert (nic["mac"], nic["tap_name"]) == (MAC, made["tap"]), nic

            def console() -> str:
                return str(client.get(f"/v1/vms/{created['id']}/console").text)

            ready = wait_for(lambda: parse_ready(console()), 120, "guest ready")
            assert (ready.ip, ready.mac) == (f"{FIXED}/24", MAC), ready
            # the gateway's side (the daemon's namespace) reaches the guest and back
            hello = wait_for(lambda: first_line(host, FIXED, 7777), 30, "hello from the guest")
            assert hello, hello

            def status() -> str:
                return str(ok(client.get("/v1/ports/p1"), 200)["port_status"])

            wait_for(lambda: status() == "ACTIVE", 30, "port ACTIVE")
            shown = ok(client.get("/v1/ports/p1"), 200)
            assert (shown["device_id"], shown["oper_state"]) == (created["id"], "up"), shown
            assert client.delete(f"/v1/vms/{created['id']}?wait=60").status_code == 204
            wait_for(lambda: status() == "DOWN", 30, "port DOWN")
            assert ok(client.get("/v1/ports/p1"), 200)["device_id"] == ""
            assert client.delete("/v1/ports/p1?wait=10").status_code == 204
            assert made["tap"] not in links(host)
