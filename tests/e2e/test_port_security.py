"""Anti-spoofing with real guests (TCG): the real daemon, a managed network, attacker A with
port_security on and victim B, both booted from the shared test guest (A from its initrd
plus a small overlay archive that adds an attack script; Linux unpacks concatenated
initramfs archives in order, later files replacing earlier ones).

After READY, A (kvt.attack=1) loops: ARP requests and replies claiming B's address
(busybox arping -U / -A), pings from B's address, frames from B's MAC; and it runs a rogue
DHCP server (busybox udhcpd) offering 10.91.0.20-30. Proven from outside:
- B's traffic from the gateway is unaffected: every ping from the daemon's namespace (the
  gateway, 10.91.0.1) to B answers, the gateway's neighbour entry for B keeps B's MAC, and
  the bridge learns B's MAC on B's tap only;
- A's forged frames are dropped and counted: GET shows A's NIC enforced, with drops by
  mac, arp, ipv4 and dhcp-server;
- a fresh DHCP client on the segment (a namespace cabled to the bridge) gets its lease from
  dnsmasq in the network's range, never from A.
KVT_PORT_SECURITY=off runs the same with A unprotected: then these checks fail (the attack
works), which is how this test was checked to fail without the feature.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.api.test_addresses_api import client_on_bridge
from tests.e2e.helpers import E2EDaemon, ok, overlay_initrd, running_daemon, wait_for
from tests.guest.build import Guest, build_guest, kernel_cmdline
from tests.guest.console import parse_ready
from tests.netns_tools import in_netns, throwaway_netns

GATEWAY = "10.91.0.1"
A_IP, A_MAC = "10.91.0.2", "52:54:00:0a:0a:0a"
B_IP, B_MAC = "10.91.0.3", "52:54:00:0b:0b:0b"
ROGUE_RANGE = ("10.91.0.20", "10.91.0.30")
PROTECTED = os.environ.get("KVT_PORT_SECURITY", "on") != "off"

ATTACK = r"""#!/bin/sh
# attack.sh VICTIM_IP VICTIM_MAC GATEWAY OWN_MAC: forge the victim's identity forever
vip=$1 vmac=$2 gw=$3 own=$4
echo 1 >/proc/sys/net/ipv4/ip_nonlocal_bind # arping -s: a source that is not its own
cat >/run/udhcpd.conf <<EOF
start ROGUE_START
end ROGUE_END
interface eth0
lease_file /run/udhcpd.leases
opt subnet 255.255.255.0
opt router $(ip -o -4 addr show dev eth0 | awk '{print $4}' | cut -d/ -f1)
EOF
touch /run/udhcpd.leases
udhcpd -a 10 /run/udhcpd.conf
echo "
KVT-ATTACK started"
while :; do
	ping -c 1 -W 1 "$gw" >/dev/null 2>&1 # its own identity: the gateway's MAC in its cache
	arping -U -c 1 -w 1 -I eth0 -s "$vip" "$gw" >/dev/null 2>&1
	arping -A -c 1 -w 1 -I eth0 -s "$vip" "$gw" >/dev/null 2>&1
	ip addr add "$vip/32" dev eth0 # (busybox ping -I wants a local address)
	ping -c 2 -W 1 -I "$vip" "$gw" >/dev/null 2>&1
	ip addr del "$vip/32" dev eth0
	ip link set eth0 address "$vmac"
	arping -c 1 -w 1 -I eth0 "$gw" >/dev/null 2>&1
	ping -c 1 -W 1 "$gw" >/dev/null 2>&1
	ip link set eth0 address "$own"
	sleep 0.2
done
""".replace("ROGUE_START", ROGUE_RANGE[0]).replace("ROGUE_END", ROGUE_RANGE[1])

HOOK = (
    '[ "$(param attack)" = 1 ] && /attack.sh "$(param victim_ip)" "$(param victim_mac)" '
    '"$(param gw)" "$mac" &\nshell_forever\n'
)


def attacker_initrd(guest: Guest, workdir: Path) -> Path:
    """The shared guest with a hook that starts /attack.sh when kvt.attack=1."""
    return overlay_initrd(guest, HOOK, {"attack.sh": ATTACK}, workdir / "attacker.initrd")


@dataclass
class Segment:
    host: str
    daemon: E2EDaemon
    vms: dict[str, dict[str, Any]]

    def get(self, name: str) -> dict[str, Any]:
        with self.daemon.client() as client:
            return dict(ok(client.get(f"/v1/vms/{self.vms[name]['id']}"), 200))

    def console(self, name: str) -> str:
        with self.daemon.client() as client:
            return str(client.get(f"/v1/vms/{self.vms[name]['id']}/console").text)


def _vm(name: str, kernel: Path, initrd: Path, cmdline: str, nic: dict[str, Any]) -> Any:
    return {
        "name": name,
        "memory_mib": 256,
        "boot": {"kernel": str(kernel), "initrd": str(initrd), "cmdline": cmdline},
        "nics": [{"backend": "bridge", "bridge": "br0", **nic}],
    }


@pytest.fixture(scope="module")
def segment(request: pytest.FixtureRequest) -> Iterator[Segment]:
    guest = build_guest("virtio")
    workdir = Path(tempfile.mkdtemp(prefix="kvt-", dir="/tmp"))  # short QMP socket paths
    workdir.chmod(0o755)
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        host = stack.enter_context(throwaway_netns())
        initrd = attacker_initrd(guest, workdir)
        daemon = stack.enter_context(running_daemon(host, workdir / "daemon", request))
        with daemon.client(timeout=60) as client:
            ok(client.post("/v1/bridges?wait=10", json={"name": "br0"}), 201)
            body = {"name": "nat0", "bridge": "br0", "subnet": "10.91.0.0/24"}
            ok(client.post("/v1/networks?wait=10", json=body), 201)
            vms: dict[str, dict[str, Any]] = {}
            victim = _vm(
                "victim",
                guest.kernel,
                guest.initrd,
                kernel_cmdline(dhcp=True),
                {"mac": B_MAC, "ipv4": B_IP},
            )
            vms["victim"] = ok(client.post("/v1/vms?wait=60", json=victim), 201)
            segment = Segment(host, daemon, vms)
            wait_for(lambda: parse_ready(segment.console("victim")), 120, "victim ready")
            extra = [f"kvt.victim_ip={B_IP}", f"kvt.victim_mac={B_MAC}", f"kvt.gw={GATEWAY}"]
            attacker = _vm(
                "attacker",
                guest.kernel,
                initrd,
                kernel_cmdline(dhcp=True, extra=["kvt.attack=1", *extra]),
                {"mac": A_MAC, "ipv4": A_IP, "port_security": PROTECTED},
            )
            vms["attacker"] = ok(client.post("/v1/vms?wait=60", json=attacker), 201)
            yield segment


def _neighbour(ns: str, address: str) -> str | None:
    shown = in_netns(ns, "ip", "neigh", "show", address, "dev", "br0", check=False).stdout
    found = re.search(r"lladdr (\S+)", shown)
    return found[1] if found else None


def _fdb_port(ns: str, mac: str) -> str | None:
    shown = in_netns(ns, "bridge", "fdb", "show", "br", "br0", check=False).stdout
    for line in shown.splitlines():
        words = line.split()
        if words and words[0] == mac and "dev" in words:
            return words[words.index("dev") + 1]
    return None


def test_a_forging_guest_reaches_nobody_and_is_counted(segment: Segment) -> None:
    ready = wait_for(lambda: parse_ready(segment.console("attacker")), 120, "attacker ready")
    assert ready.ip == f"{A_IP}/24"  # its own DHCP (from 0.0.0.0) passed its rules
    wait_for(lambda: "KVT-ATTACK started" in segment.console("attacker") or None, 60, "attack")
    victim_tap = segment.vms["victim"]["nics"][0]["tap_name"]
    time.sleep(5)  # a few rounds of forgery first
    lost = 0
    for _ in range(20):  # the gateway talks to B while A keeps forging
        answered = in_netns(
            segment.host, "busybox", "ping", "-c", "1", "-W", "2", B_IP, check=False
        )
        lost += answered.returncode != 0
        assert _neighbour(segment.host, B_IP) in (None, B_MAC)
        assert _fdb_port(segment.host, B_MAC) in (None, victim_tap)
        time.sleep(0.3)
    assert lost == 0, f"{lost} of 20 pings from the gateway to the victim were lost"

    state = segment.get("attacker")["nics"][0]["port_security_state"]
    assert state["enforced"], state
    by = {why: counted["packets"] for why, counted in state["dropped_by"].items()}
    assert by["mac"] > 0 and by["arp"] > 0 and by["ipv4"] > 0, state
    victim = segment.get("victim")["nics"][0]
    assert victim["port_security"] is False and victim["port_security_state"] is None


def test_a_rogue_dhcp_server_in_a_guest_serves_nobody(segment: Segment) -> None:
    wait_for(lambda: "KVT-ATTACK started" in segment.console("attacker") or None, 120, "attack")
    leases = []
    for number in range(3):  # a fresh client on the segment, three times
        mac = f"52:54:00:0c:0c:{number:02x}"
        with client_on_bridge(segment.host, "br0", mac) as client:
            result = in_netns(
                client,
                *("busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "8", "-T", "2"),
                *("-s", "/bin/true"),
                check=False,
            )
            text = result.stdout + result.stderr
            found = re.search(r"lease of (\S+) obtained from (\S+)", text)
            assert found, text
            leases.append((found[1], found[2].rstrip(",")))
    assert all(server == GATEWAY for _, server in leases), leases
    assert all(int(address.split(".")[-1]) >= 128 for address, _ in leases), leases
    state = segment.get("attacker")["nics"][0]["port_security_state"]
    assert state["dropped_by"]["dhcp-server"]["packets"] > 0, state
