"""Managed NAT networks on VLANs (issue 10, item 3) on a kernel with 802.1Q and bridge VLAN
filtering (Debian's own, booted by the kernel test tier), through the in-process app.

Topology as in test_vlans_daemon.py: the daemon's namespace has the uplinks eth0 and eth1,
veth pairs to lan0 and lan1 in namespace `lan` (10.60.0.1 and 10.61.0.1, untagged). br0
(uplink eth0, 10.60.0.10) carries VLAN 10 by filtering, br1 (uplink eth1, 10.61.0.10) with a
bridge per VLAN. Each VLAN carries a managed network (NAT on, DHCP): its gateway lives on the
VLAN's L3 interface, `br0.10` (an 802.1Q link on the trunk bridge, whose own port joins VID
10 tagged) or the VLAN's bridge `br1v10`. A guest on each VLAN is a namespace wired to a tap
resource on the VLAN (tap_wire.py): it gets its lease from the daemon's dnsmasq (busybox
udhcpc), pings the gateway, reaches a TCP server in `lan` that answers with the peer address
it sees (the uplink's address: SNAT), and is reached from `lan` through a port forward (a
stopped VM's NIC on the VLAN is the forward's target; the guest takes its MAC and so its
fixed address). Drift: `br0.10` deleted by hand comes back with the gateway (netlink tells
the supervisor; the full resync is kept out of reach) and DHCP works again. Deleting the
network removes `br0.10` and takes the trunk's own port off VID 10.
One test, to share the one costly setup.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.host.vlans import VlanOps
from app.settings import Settings
from tests.kernel.nested.conftest import wired_guest
from tests.kernel.nested.test_vlans_daemon import (  # noqa: F401 (fixture lan)
    daemon_app,
    lan,
    memberships,
    ok,
    until,
)
from tests.netns_tools import in_netns, ip, links

# a TCP server that answers each connection with the peer address it sees, then closes it
PEER_ECHO = """
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", int(sys.argv[1])))
server.listen(8)
print("ready", flush=True)
while True:
    conn, peer = server.accept()
    conn.sendall(peer[0].encode() + b"\\n")
    conn.close()
"""
CONNECT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as conn:
    print(conn.recv(64).decode().strip())
"""
WEB_MAC = "52:54:00:0a:0a:10"
WEB_B_MAC = "52:54:00:0a:0b:10"


@contextlib.contextmanager
def peer_echo(ns: str, port: int) -> Iterator[None]:
    """PEER_ECHO listening on `port` in namespace `ns`; killed (by pid) afterwards."""
    argv = ["ip", "netns", "exec", ns, sys.executable, "-I", "-S", "-c", PEER_ECHO, str(port)]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield
    finally:
        proc.kill()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def peer_seen(ns: str, address: str, port: int) -> str:
    """What the PEER_ECHO at address:port answers a connection from namespace `ns`."""
    argv = (sys.executable, "-I", "-S", "-c", CONNECT, address, str(port))
    return in_netns(ns, *argv).stdout.strip()


def dhcp(guest: str, gateway: str) -> str | None:
    """busybox udhcpc's lease (the address only: the event script is /bin/true), then the
    address and a default route via `gateway` set on the guest's eth0 by hand; None (and
    udhcpc's output printed) without a lease."""
    result = in_netns(
        guest,
        *("busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "10", "-T", "2"),
        *("-s", "/bin/true"),
        check=False,
    )
    output = result.stdout + result.stderr
    leased = [
        line.split("lease of ")[1].split()[0] for line in output.splitlines() if "lease of" in line
    ]
    if not leased:
        print(f"udhcpc got no lease on {guest}: {output}")
        return None
    ip(guest, "addr", "replace", f"{leased[0]}/24", "dev", "eth0")
    ip(guest, "route", "replace", "default", "via", gateway)
    return leased[0]


def pings(ns: str, address: str) -> bool:
    argv = ("busybox", "ping", "-c", "1", "-W", "3", address)
    return in_netns(ns, *argv, check=False).returncode == 0


def test_networks_on_vlans_serve_dhcp_nat_forwards_and_repair_the_l3_interface(
    netns: str,
    lan: str,  # noqa: F811
    settings: Settings,
    modules: Callable[..., None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    modules("tun")  # /dev/net/tun for the guests' wires
    caplog.set_level(logging.INFO, logger="app.supervisor")  # in the report of a failure
    # the full resync (which repairs anything) is kept out of the test's reach: drift must
    # be repaired through the netlink notification of the link it concerns
    settings = settings.model_copy(update={"reconcile_interval": 3600})
    with daemon_app(netns, settings) as api, peer_echo(lan, 7000):
        _trunks_vlans_networks(api)
        _l3_interfaces(api, netns)
        web = _vm(api, "web", "ten-a", WEB_MAC)["nics"][0]["ipv4"]
        web_b = _vm(api, "web-b", "ten-b", WEB_B_MAC)["nics"][0]["ipv4"]
        for tap, vlan in (("tapa", "ten-a"), ("tapb", "ten-b")):
            ok(api.post("/v1/taps?wait=30", json={"name": tap, "vlan": vlan}), 201)
        # a tap's membership on a filtering trunk (PVID 10) is applied by a pass over the
        # trunk, which a new tap does not trigger yet: the next full pass does (here: now)
        api.app.state.supervisor.resync()  # type: ignore[attr-defined]
        joined = _eventually(lambda: memberships(netns, "br0").get("tapa") == {10: (True, True)})
        assert joined, _diagnose(api, netns)
        with (
            wired_guest(netns, "tapa", WEB_MAC) as guest_a,
            wired_guest(netns, "tapb", WEB_B_MAC) as guest_b,
        ):
            # -- DHCP from the daemon's dnsmasq (the VM NIC's fixed address: the guest has its
            # MAC), the gateway answers, SNAT to the uplink's address
            leases = dhcp(guest_a, "10.93.0.1"), dhcp(guest_b, "10.94.0.1")
            assert leases == (web, web_b), _diagnose(api, netns, guest_a, guest_b)
            assert pings(guest_a, "10.93.0.1") and pings(guest_b, "10.94.0.1")
            assert peer_seen(guest_a, "10.60.0.1", 7000) == "10.60.0.10"
            assert peer_seen(guest_b, "10.61.0.1", 7000) == "10.61.0.10"
            # -- port forwards from the LAN to the guests (the uplinks' addresses)
            _forwards(api, lan, guest_a, guest_b)
            # -- the views tell where each port and MAC is, on both backends
            _views(api, netns)
            # -- drift: br0.10 deleted by hand comes back with the gateway; DHCP works again
            ip(netns, "link", "del", "br0.10")
            back = until(lambda: _l3_ready(netns), timeout=20, what="br0.10 back with 10.93.0.1")
            assert back.info.get("IFLA_VLAN_ID") == 10 and back.alias.startswith("kvmnetd:vlan:")
            assert memberships(netns, "br0")["br0"][10] == (False, False)
            assert dhcp(guest_a, "10.93.0.1") == web, _diagnose(api, netns, guest_a)
            assert pings(guest_a, "10.93.0.1")
            # the repair is the VLAN's: an event names the new L3 interface, and it settles
            bus = api.app.state.context.bus  # type: ignore[attr-defined]
            repaired = [e.data or {} for e in bus.since(0) if e.type == "vlan.drift_repaired"]
            objects = [o for data in repaired for o in data.get("objects", [])]
            assert back.index in [o["ifindex"] for o in objects if o["name"] == "br0.10"], repaired
            until(lambda: _settled(api, "ten-a"), what="VLAN ten-a active again")
        # -- the L3 interface goes with its network (forced: its forward and the VM's fixed
        # address use it), and the trunk's own port leaves VID 10
        r = api.delete("/v1/networks/nat-a?force=true&wait=30")
        assert r.status_code == 204, r.text
        until(lambda: "br0.10" not in links(netns), timeout=20, what="br0.10 gone")
        until(lambda: 10 not in memberships(netns, "br0")["br0"], what="br0 off VID 10")


def _eventually(check: Callable[[], Any], timeout: float = 30) -> Any:
    """check()'s first true value within `timeout` seconds, else None."""
    deadline = time.monotonic() + timeout
    while not (value := check()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return value


def _diagnose(api: TestClient, netns: str, *guests: str) -> str:
    """What a failed step needs to be understood: the kernel's view (links with counters,
    addresses, VLAN membership, nft rules), the resources and the networks' dnsmasq logs."""
    parts = []
    for argv in (
        ("ip", "-s", "-br", "link"),
        ("ip", "-br", "addr"),
        ("bridge", "-d", "vlan", "show"),
        ("nft", "list", "ruleset"),
    ):
        result = in_netns(netns, *argv, check=False)
        parts.append(f"$ {' '.join(argv)}\n{result.stdout}{result.stderr}")
    for guest in guests:
        result = in_netns(guest, "ip", "-s", "link", "show", "eth0", check=False)
        parts.append(f"guest {guest}:\n{result.stdout}{result.stderr}")
    for path in (
        "/v1/vlans",
        "/v1/taps",
        "/v1/networks",
        "/v1/networks/nat-a/log?lines=30",
        "/v1/networks/nat-b/log?lines=30",
    ):
        parts.append(f"GET {path}\n{api.get(path).text}")
    return "\n".join(parts)


def _trunks_vlans_networks(api: TestClient) -> None:
    for n in (0, 1):
        ok(api.post("/v1/bridges?wait=20", json={"name": f"br{n}"}), 201)
        r = api.put(
            f"/v1/bridges/br{n}/uplink?wait=30",
            json={"interface": f"eth{n}", "probe_address": f"10.6{n}.0.1"},
        )
        assert r.status_code in (200, 201) and r.json()["status"] == "active", r.text
    for name, trunk, backend in (
        ("ten-a", "br0", "vlan_filtering"),
        ("ten-b", "br1", "bridge_per_vlan"),
    ):
        body = {"name": name, "vlan_id": 10, "trunk": trunk, "backend": backend}
        assert ok(api.post("/v1/vlans?wait=30", json=body), 201)["status"] == "active"
    for name, vlan, subnet in (
        ("nat-a", "ten-a", "10.93.0.0/24"),
        ("nat-b", "ten-b", "10.94.0.0/24"),
    ):
        body = {"name": name, "vlan": vlan, "subnet": subnet, "nat": {"enabled": True}}
        shown = ok(api.post("/v1/networks?wait=90", json=body), 201)
        assert shown["status"] == "active", shown


def _l3_interfaces(api: TestClient, netns: str) -> None:
    """The gateways on the VLANs' L3 interfaces, read back through netlink."""
    kernel = links(netns)
    l3 = kernel["br0.10"]
    assert l3.kind == "vlan" and l3.info.get("IFLA_VLAN_ID") == 10, l3
    assert json.loads(ip(netns, "-j", "link", "show", "br0.10").stdout)[0]["link"] == "br0"
    assert "10.93.0.1/24" in l3.addresses, l3
    assert "10.94.0.1/24" in kernel["br1v10"].addresses
    # the trunk's own port is a member of VID 10, tagged (the host's presence on the VLAN)
    assert memberships(netns, "br0")["br0"][10] == (False, False)
    assert ok(api.get("/v1/networks/nat-a"), 200)["link"] == "br0.10"


def _vm(api: TestClient, name: str, vlan: str, mac: str) -> dict[str, Any]:
    """A stopped VM whose NIC is an access port of `vlan`: the forward's target."""
    body = {
        "name": name,
        "power_state": "stopped",
        "boot": {"kernel": "/nonexistent"},
        "nics": [{"backend": "bridge", "vlan": vlan, "mac": mac}],
    }
    vm = ok(api.post("/v1/vms?wait=30", json=body), 201)
    assert vm["nics"][0]["ipv4"], vm
    return vm


def _forwards(api: TestClient, lan_ns: str, guest_a: str, guest_b: str) -> None:
    for network, vm, port in (("nat-a", "web", 8080), ("nat-b", "web-b", 8081)):
        body = {"network": network, "vm": vm, "port": port, "target_port": 80}
        forward = ok(api.post("/v1/port-forwards?wait=30", json=body), 201)
        assert forward["status"] == "active", forward
    with peer_echo(guest_a, 80), peer_echo(guest_b, 80):
        assert peer_seen(lan_ns, "10.60.0.10", 8080) == "10.60.0.1"
        assert peer_seen(lan_ns, "10.61.0.10", 8081) == "10.61.0.1"


def _views(api: TestClient, netns: str) -> None:
    """The trunks' and VLANs' views against netlink, after the guests' traffic: br1's views
    include the ports and table of br1v10 (bridge_per_vlan) with VID 10 and `via`; br0's
    table has guest a's MAC on VLAN 10; each VLAN's own views are its trunk's rows on its
    VID; ten-a's kernel objects include its L3 interface br0.10 and VID 10 on br0's own
    port, observed, also after a pass over the drifted trunk alone (the membership step,
    which never looks at br0.10)."""
    kernel = links(netns)
    on = {name: link.master for name, link in kernel.items() if link.master in ("br1", "br1v10")}
    assert set(on.values()) == {"br1", "br1v10"} and on["tapb"] == on["eth1.10"] == "br1v10", on
    # ports: br1's own (eth1), then br1v10's (eth1.10, tapb) on VID 10
    ports = ok(api.get("/v1/bridges/br1"), 200)["ports"]
    assert {p["name"]: p["via"] or "br1" for p in ports} == on, ports
    assert {p["name"]: p["vlan"] for p in ports if p["via"]} == {"eth1.10": 10, "tapb": 10}
    assert {p["name"]: p["ifindex"] for p in ports} == {n: kernel[n].index for n in on}
    # the MAC tables: guest b's MAC learned on tapb in br1v10; guest a's on tapa, VLAN 10
    with VlanOps(netns=netns) as ops:
        live_b = {(e.port, e.mac, e.vid) for e in ops.fdb("br1v10") if e.port != "br1v10"}
        live_a = {(e.port, e.mac, e.vid) for e in ops.fdb("br0") if e.port != "br0"}
    assert ("tapb", WEB_B_MAC, None) in live_b and ("tapa", WEB_MAC, 10) in live_a
    fdb = listing(api, "/v1/bridges/br1/fdb")
    via = [e for e in fdb if e["via"] is not None]
    assert {e["port"] for e in via} <= {"tapb", "eth1.10"} and {e["vlan"] for e in via} == {10}
    assert ("tapb", WEB_B_MAC, "br1v10") in {(e["port"], e["mac"], e["via"]) for e in fdb}
    assert all(on.get(e["port"]) == (e["via"] or "br1") for e in fdb), fdb
    seen_a = {
        (e["port"], e["mac"], e["vlan"], e["via"]) for e in listing(api, "/v1/bridges/br0/fdb")
    }
    assert ("tapa", WEB_MAC, 10, None) in seen_a
    # membership: br1 does not filter; its rows are br1v10's ports on VID 10, untagged
    view = ok(api.get("/v1/bridges/br1/vlans"), 200)
    assert view["vlan_filtering"] is False
    rows = {(p["port"], p["vid"], p["pvid"], p["untagged"], p["via"]) for p in view["ports"]}
    assert rows == {("eth1.10", 10, True, True, "br1v10"), ("tapb", 10, True, True, "br1v10")}
    assert all(p["ours"] and p["planned"] for p in view["ports"]), view
    # each VLAN's own views: its trunk's rows on its VID (both backends)
    assert listing(api, "/v1/vlans/ten-b/ports") == view["ports"]
    vlan_b_fdb = listing(api, "/v1/vlans/ten-b/fdb")
    assert ("tapb", WEB_B_MAC) in {(e["port"], e["mac"]) for e in vlan_b_fdb}
    members = {port: vids[10] for port, vids in memberships(netns, "br0").items() if 10 in vids}
    assert members == {"tapa": (True, True), "eth0": (False, False), "br0": (False, False)}
    shown = {p["port"]: (p["pvid"], p["untagged"]) for p in listing(api, "/v1/vlans/ten-a/ports")}
    assert shown == members
    vlan_a_fdb = listing(api, "/v1/vlans/ten-a/fdb")
    assert ("tapa", WEB_MAC) in {(e["port"], e["mac"]) for e in vlan_a_fdb}
    assert {e["vlan"] for e in vlan_a_fdb} == {10}
    # ten-a's kernel objects: the uplink's VID, the L3 interface and its VID on br0's port
    _kernel_objects_of_ten_a(api, kernel["br0.10"].index)
    # a pass over the drifted trunk alone (tapa's VID removed by hand) keeps br0.10 observed
    bus = api.app.state.context.bus  # type: ignore[attr-defined]
    before = len([e for e in bus.since(0) if e.type == "vlan.drift_repaired"])
    with VlanOps(netns=netns) as ops:
        ops.vlan_del("br0", "tapa", 10)
    until(
        lambda: len([e for e in bus.since(0) if e.type == "vlan.drift_repaired"]) > before,
        what="the trunk pass repairing tapa's VID 10",
    )
    assert memberships(netns, "br0")["tapa"] == {10: (True, True)}
    _kernel_objects_of_ten_a(api, kernel["br0.10"].index)


def listing(api: TestClient, path: str) -> list[dict[str, Any]]:
    r = api.get(path)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _kernel_objects_of_ten_a(api: TestClient, l3_index: int) -> None:
    objects = ok(api.get("/v1/vlans/ten-a"), 200)["kernel_objects"]
    assert [(o["kind"], o["name"], o["role"], o["parent"]) for o in objects] == [
        ("bridge_vlan", "eth0", "uplink_tagged", "br0"),
        ("vlan", "br0.10", "l3_interface", "br0"),
        ("bridge_vlan", "br0", "l3_tagged", "br0"),
    ], objects
    states = {o["name"]: (o["observed_state"], o["ifindex"]) for o in objects}
    assert states["eth0"] == states["br0"] == ("present", None), objects
    assert states["br0.10"][1] == l3_index and states["br0.10"][0] not in (None, "missing")


def _l3_ready(netns: str) -> Any:
    link = links(netns).get("br0.10")
    return link if link is not None and "10.93.0.1/24" in link.addresses else None


def _settled(api: TestClient, name: str) -> dict[str, Any] | None:
    vlan = ok(api.get(f"/v1/vlans/{name}"), 200)
    settled = vlan["status"] == "active" and vlan["observed_generation"] == vlan["generation"]
    return vlan if settled else None
