"""Guests on VLANs end to end through the daemon, on a kernel that has 802.1Q and bridge VLAN
filtering (Debian's own, booted by the kernel test tier): bridges, uplinks, VLANs and taps are
made through the API of the in-process daemon (`daemon_app`), and a "guest" on each tap is a
namespace wired to it by tap_wire.py (what a VM's NIC would send enters the tap), running
busybox's udhcpc and ping.

Topology (the `lan` fixture of test_vlans_daemon.py, plus VLAN 20 on the far end): the daemon's
namespace has uplinks eth0 and eth1, veth pairs whose far ends lan0 and lan1 (namespace `lan`,
a switch trunking VLANs 10 and 20) carry 802.1Q sub-interfaces `lanN.10` (10.1N.0.1/24, a
dnsmasq DHCP server) and `lanN.20` (10.2N.0.1/24). Trunk br0 (eth0) has the backend
vlan_filtering, trunk br1 (eth1) bridge_per_vlan; on each, two guests on VLAN 10 and one on
VLAN 20, whose VLAN 10 address is in the same subnet, so only the VLAN keeps it apart.

Proven for both backends: the VLAN 10 guests reach each other and the VLAN 20 guest reaches
neither (but does reach VLAN 20's far end); a VLAN 10 guest gets its address by DHCP from the
server behind the trunk and reaches it (issue 10's fault "a VLAN-aware trunk drops tagged
frames because the uplink port lacks the VIDs"); with bridge_per_vlan, one of the two VLAN 10
taps deleted through the API leaves the sub-interface `eth1.10` and the bridge `br1v10` to
the other, which keeps its connectivity ("two VMs share a VLAN sub-interface; when one stops,
the other keeps its connectivity"); after a daemon restart on the same state, guests still
reach each other and the far end. One test, to share the one costly setup (nested Python is
~12x slower).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.settings import Settings
from tests.kernel.nested.conftest import ModuleLoader, wired_guest
from tests.kernel.nested.test_vlans_daemon import daemon_app, ok, until
from tests.kernel.nested.test_vlans_daemon import lan as lan
from tests.netns_tools import ip, links

_TIER_PLUGIN = Path(__file__).resolve().parents[1] / "conftest.py"
if os.environ.get("KVT_NESTED") != "1" and not _TIER_PLUGIN.is_file():
    pytest.skip(
        "runs only inside the nested Debian kernel of the kernel test tier (tests/kernel)",
        allow_module_level=True,
    )

# trunk -> (uplink, far end, backend); trunk brN's VLAN V is named "<trunk>-<V>"
TRUNKS = {
    "br0": ("eth0", "lan0", "vlan_filtering"),
    "br1": ("eth1", "lan1", "bridge_per_vlan"),
}
# guest tap -> (trunk, VLAN id, static VLAN 10 subnet host part or None for DHCP, guest MAC)
GUESTS = {
    "g0a": ("br0", 10, None, "02:00:00:00:00:0a"),
    "g0b": ("br0", 10, 2, "02:00:00:00:00:0b"),
    "g0c": ("br0", 20, 3, "02:00:00:00:00:0c"),
    "g1a": ("br1", 10, None, "02:00:00:00:01:0a"),
    "g1b": ("br1", 10, 2, "02:00:00:00:01:0b"),
    "g1c": ("br1", 20, 3, "02:00:00:00:01:0c"),
}
LEAVER = "g1b"  # its tap is deleted through the API; g1a stays on the same VLAN 10 objects
LEASE = re.compile(r"lease of (\d+\.\d+\.\d+\.\d+) obtained")


def far(trunk: str, vid: int) -> str:
    """The far end's address on VLAN `vid` behind `trunk` (10.1N.0.1, 10.2N.0.1)."""
    return f"10.{vid // 10}{trunk[-1]}.0.1"


def run(ns: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def pings(ns: str, address: str, tries: int = 3) -> bool:
    """Whether `busybox ping` from `ns` gets an answer from `address` (within `tries` pings of
    2 s each; one is enough for a ping that must fail)."""
    return any(
        run(ns, "busybox", "ping", "-c", "1", "-W", "2", address).returncode == 0
        for _ in range(tries)
    )


def dhcp_lease(ns: str) -> str:
    """The address busybox udhcpc obtains on `eth0` of `ns` (RFC 2131 DISCOVER..ACK); the
    script /bin/true leaves eth0 unconfigured."""
    udhcpc = ["busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "5", "-s", "/bin/true"]
    done = run(ns, *udhcpc)
    found = LEASE.search(done.stdout + done.stderr)
    assert done.returncode == 0 and found, f"udhcpc in {ns}: {done.stdout}{done.stderr}"
    return found.group(1)


@contextlib.contextmanager
def dhcp_server(lan_ns: str, interface: str, tmp_path: Path) -> Iterator[None]:
    """dnsmasq answering DHCP on `interface` (a sub-interface 10.X.0.1/24) of `lan_ns`, as a
    LAN's server behind the trunk would (dnsmasq(8): no DNS, in the foreground, no config
    file); killed by pid afterwards."""
    subnet = ip_of(lan_ns, interface).rsplit(".", 1)[0]
    argv = [
        "ip", "netns", "exec", lan_ns, "dnsmasq", "--keep-in-foreground", "--port=0",
        "--conf-file=/dev/null", f"--interface={interface}", "--bind-interfaces",
        "--except-interface=lo", f"--dhcp-range={subnet}.100,{subnet}.150,255.255.255.0,1h",
        f"--dhcp-leasefile={tmp_path / f'{interface}.leases'}",
        f"--pid-file={tmp_path / f'{interface}.pid'}", "--user=root", "--group=root",
        "--log-facility=-",
    ]  # fmt: skip
    log = (tmp_path / f"{interface}.log").open("w")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        proc.kill()
        proc.wait(timeout=30)
        log.close()


def ip_of(ns: str, interface: str) -> str:
    addresses = links(ns)[interface].addresses
    return next(a.split("/")[0] for a in addresses if "." in a)


def add_far_vlan_20(lan_ns: str) -> None:
    """lan0.20 10.20.0.1/24 and lan1.20 10.21.0.1/24 beside the fixture's VLAN 10 ends."""
    for n in (0, 1):
        sub = f"lan{n}.20"
        ip(lan_ns, "link", "add", "link", f"lan{n}", "name", sub, "type", "vlan", "id", "20")
        ip(lan_ns, "addr", "add", f"10.2{n}.0.1/24", "dev", sub)
        ip(lan_ns, "link", "set", sub, "up")


def make_trunks_and_vlans(api: TestClient) -> None:
    """Both trunks with their uplinks (one after the other: the uplink needs its bridge), then
    VLANs 10 and 20 on each, created at once and awaited together."""
    for trunk, (uplink, _, _) in TRUNKS.items():
        ok(api.post("/v1/bridges?wait=20", json={"name": trunk}), 201)
        uplink_body = {"interface": uplink, "probe_address": far(trunk, 60)}
        r = api.put(f"/v1/bridges/{trunk}/uplink?wait=30", json=uplink_body)
        assert ok(r, 200 if r.status_code == 200 else 201)["status"] == "active", r.text
    vlans = {}
    for trunk, (_, _, backend) in TRUNKS.items():
        for vid in (10, 20):
            body = {"name": f"{trunk}-{vid}", "vlan_id": vid, "trunk": trunk, "backend": backend}
            vlans[body["name"]] = ok(api.post("/v1/vlans", json=body), 202)["backend"]
    for vlan in settled(api, "vlans", vlans):
        assert (vlan["backend"], vlan["status"]) == (vlans[vlan["name"]], "active"), vlan


def make_taps(api: TestClient, taps: dict[str, tuple[str, int]]) -> None:
    """Tap resources on VLANs (tap -> trunk, VLAN id), created at once (the supervisor makes
    them in one pass) and awaited together."""
    for tap, (trunk, vid) in taps.items():
        ok(api.post("/v1/taps", json={"name": tap, "vlan": f"{trunk}-{vid}"}), 202)
    for shown in settled(api, "taps", taps):
        assert shown["status"] == "active", shown


def settled(api: TestClient, kind: str, names: Collection[str]) -> list[dict[str, Any]]:
    """The resources `/v1/<kind>/<name>` once all have settled (observed_generation ==
    generation, status not pending: app.domain.status)."""

    def shown() -> list[dict[str, Any]] | None:
        rows = [ok(api.get(f"/v1/{kind}/{name}"), 200) for name in names]
        done = all(r["observed_generation"] == r["generation"] for r in rows)
        return rows if done and all(r["status"] != "pending" for r in rows) else None

    return until(shown, timeout=120, what=f"{kind} {sorted(names)} settled")  # type: ignore[no-any-return]


def configure(guests: dict[str, str], leases: dict[str, str]) -> dict[str, str]:
    """Addresses on the guests' eth0: the DHCP lease, or a static one in the VLAN 10 subnet
    (plus one on VLAN 20's for the VLAN 20 guests); the guests' VLAN 10 subnet address by tap."""
    addresses = {}
    for tap, (trunk, vid, host, _) in GUESTS.items():
        address = leases[tap] if host is None else f"{far(trunk, 10).rsplit('.', 1)[0]}.{host}"
        ip(guests[tap], "addr", "add", f"{address}/24", "dev", "eth0")
        if vid == 20:
            ip(guests[tap], "addr", "add", f"{far(trunk, 20)[:-1]}{host}/24", "dev", "eth0")
        addresses[tap] = address
    return addresses


def assert_segments(guests: dict[str, str], addresses: dict[str, str]) -> None:
    """On each trunk: the VLAN 10 guests reach each other and the far end; the VLAN 20 guest
    reaches its own VLAN's far end, and neither VLAN 10 guest."""
    for trunk in TRUNKS:
        a, b, c = (f"g{trunk[-1]}{x}" for x in "abc")
        assert pings(guests[a], addresses[b]), f"{trunk}: {a} -> {b} on VLAN 10"
        assert pings(guests[b], addresses[a]), f"{trunk}: {b} -> {a} on VLAN 10"
        assert pings(guests[a], far(trunk, 10)), f"{trunk}: {a} -> far end on VLAN 10"
        assert pings(guests[c], far(trunk, 20)), f"{trunk}: {c} -> far end on VLAN 20"
        for other in (a, b):
            assert not pings(guests[c], addresses[other], tries=1), f"{trunk}: {c} -> {other}"


def assert_restarted(guests: dict[str, str], addresses: dict[str, str]) -> None:
    """After the restart: on br0 the VLAN 10 guests reach each other and the far end, on br1
    the remaining VLAN 10 guest reaches the far end."""
    assert pings(guests["g0a"], addresses["g0b"]), "br0: g0a -> g0b after the restart"
    assert pings(guests["g0b"], far("br0", 10)), "br0: g0b -> far end after the restart"
    assert pings(guests["g1a"], far("br1", 10)), "br1: g1a -> far end after the restart"


def test_guests_on_vlans_through_the_daemon_both_backends(
    netns: str, lan: str, settings: Settings, tmp_path: Path, modules: ModuleLoader
) -> None:
    modules("tun")  # no udev in the nested host: /dev/net/tun appears with the module
    add_far_vlan_20(lan)
    with contextlib.ExitStack() as stack:
        for n in (0, 1):
            stack.enter_context(dhcp_server(lan, f"lan{n}.10", tmp_path))
        with daemon_app(netns, settings) as api:
            make_trunks_and_vlans(api)
            make_taps(api, {tap: (trunk, vid) for tap, (trunk, vid, _, _) in GUESTS.items()})
            guests = {
                tap: stack.enter_context(wired_guest(netns, tap, mac))
                for tap, (_, _, _, mac) in GUESTS.items()
            }
            leases = {tap: dhcp_lease(guests[tap]) for tap in ("g0a", "g1a")}
            for tap in leases:
                assert leases[tap].startswith(far(GUESTS[tap][0], 10).rsplit(".", 1)[0] + ".1")
            addresses = configure(guests, leases)
            assert_segments(guests, addresses)
            _one_leaves_the_shared_subinterface(api, netns, guests, addresses)
        # -- restart on the same state: the taps, VLAN objects and memberships are kept
        with daemon_app(netns, settings) as api:
            for tap in GUESTS.keys() - {LEAVER}:
                assert ok(api.get(f"/v1/taps/{tap}"), 200)["status"] == "active"
            assert_restarted(guests, addresses)


def _one_leaves_the_shared_subinterface(
    api: TestClient, netns: str, guests: dict[str, str], addresses: dict[str, str]
) -> None:
    """g1a and g1b, both on VLAN 10 of br1 (bridge_per_vlan), share eth1.10 and br1v10: g1b's
    tap deleted through the API, the shared objects stay and g1a keeps its path."""
    assert api.delete(f"/v1/taps/{LEAVER}?wait=30").status_code == 204
    kernel = links(netns)
    assert LEAVER not in kernel
    assert kernel["eth1.10"].master == "br1v10" and kernel["br1v10"].kind == "bridge"
    assert kernel["g1a"].master == "br1v10"
    assert pings(guests["g1a"], far("br1", 10)), f"g1a lost the far end with {LEAVER} gone"
