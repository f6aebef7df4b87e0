"""Guests on macvtap NICs (issue 13 item 5) through the real daemon, with the shared test
guest under TCG: two guests on macvtaps in bridge mode on one parent (the host's eth0, a veth
whose peer is in a "LAN" namespace, as in test_uplink.py) reach each other and an address on
the LAN, and the LAN reaches them; the host's own address on the parent does not (kernel
behaviour: a macvtap in bridge mode never sees what the parent itself sends or receives)."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from tests.e2e.helpers import E2EDaemon, ok, wait_for
from tests.e2e.test_nat_networks import LineServer, first_line
from tests.e2e.test_vms import daemon as daemon
from tests.e2e.test_vms import guest as guest
from tests.guest.build import Guest, kernel_cmdline
from tests.guest.console import parse_fetch, parse_hello, parse_ready
from tests.netns_tools import ip, throwaway_netns

LAN_ADDRESS = "10.61.0.1"  # the LAN namespace's end of the parent's wire
HOST_ADDRESS = "10.61.0.10"  # the host's own address on the parent
GUESTS = {"mv1": "10.61.0.21", "mv2": "10.61.0.22"}
LAN_PORT = 7070
HELLO = 7777  # the test guest's hello server
LAN_TARGET = f"{LAN_ADDRESS}:{LAN_PORT}"


def _vm(guest: Guest, name: str) -> dict[str, Any]:
    peer = next(a for n, a in GUESTS.items() if n != name)
    fetch = [f"{peer}:{HELLO}", LAN_TARGET]
    return {
        "name": name,
        "memory_mib": 256,
        "boot": {
            "kernel": str(guest.kernel),
            "initrd": str(guest.initrd),
            "cmdline": kernel_cmdline(ip=f"{GUESTS[name]}/24", fetch=fetch),
        },
        "nics": [{"backend": "macvtap", "parent": "eth0"}],  # mode: bridge by default
    }


def test_guests_on_macvtaps_reach_each_other_and_the_lan_not_the_host(
    daemon: E2EDaemon, netns: str, guest: Guest
) -> None:
    with contextlib.ExitStack() as stack:
        lan = stack.enter_context(throwaway_netns())
        ip(netns, "link", "add", "eth0", "type", "veth", "peer", "name", "lan0", "netns", lan)
        ip(lan, "addr", "add", f"{LAN_ADDRESS}/24", "dev", "lan0")
        ip(lan, "link", "set", "lan0", "up")
        ip(netns, "addr", "add", f"{HOST_ADDRESS}/24", "dev", "eth0")
        ip(netns, "link", "set", "eth0", "up")
        server = LineServer(lan, LAN_ADDRESS, LAN_PORT)
        stack.callback(server.close)
        with daemon.client(timeout=120) as client:
            vms = {n: ok(client.post("/v1/vms?wait=60", json=_vm(guest, n)), 201) for n in GUESTS}
            macs = {n: vm["nics"][0]["mac"] for n, vm in vms.items()}
            started = time.monotonic()
            for name, vm in vms.items():
                assert vm["status"] == "running" and vm["nics"][0]["macvtap_mode"] == "bridge"
                console = lambda v=vm: client.get(f"/v1/vms/{v['id']}/console").text  # noqa: E731
                ready = wait_for(lambda c=console: parse_ready(c()), 90, f"{name} ready")
                assert ready.mac == macs[name]
                peer = next(n for n in GUESTS if n != name)
                target = f"{GUESTS[peer]}:{HELLO}"
                hello = parse_hello(
                    wait_for(lambda c=console, t=target: parse_fetch(c(), t), 60, f"{name}>{peer}")
                )
                assert hello is not None and hello.mac == macs[peer]  # guest to guest
                answer = wait_for(lambda c=console: parse_fetch(c(), LAN_TARGET), 60, "the LAN")
                assert answer == f"OUTSIDE saw {GUESTS[name]}"  # guest to the LAN
                hello = parse_hello(first_line(lan, GUESTS[name], HELLO) or "")
                assert hello is not None and hello.mac == macs[name]  # the LAN to the guest
            took = time.monotonic() - started
            print(f"both guests reached each other and the LAN in {took:.1f} s")
            # the host's own address on the parent is not on the macvtaps' segment
            started = time.monotonic()
            assert first_line(netns, GUESTS["mv1"], HELLO) is None
            print(f"the host's attempt failed after {time.monotonic() - started:.1f} s")
            for vm in vms.values():
                assert client.delete(f"/v1/vms/{vm['id']}?wait=60").status_code == 204
        links = ip(netns, "-o", "link", "show", "type", "macvtap").stdout
        assert links.strip() == "", links
