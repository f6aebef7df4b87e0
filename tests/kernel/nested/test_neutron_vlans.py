"""Neutron `vlan` networks, and guests on Neutron ports on them, on a kernel that has 802.1Q
and bridge VLAN filtering (Debian's own, booted by the kernel test tier), driven by the real
client: openstacksdk against the app served over HTTP (uvicorn on the nested host's
loopback, as the daemon's TCP listener serves it), settings physical_networks {"physnet1":
"br-phys"} and tenant_network_type vlan. Everything the SDK makes is read back through
netlink.

- vlan_filtering (what `auto` picks on this kernel): the admin's provider network (vlan,
  physnet1, segment 101) creates br-phys and VID 101 on its trunk port (the uplink eth0); a
  member of a project with vlan_ranges [[200, 210]] gets VID 200 without provider
  attributes, which its view omits. Through each owner's SDK: a subnet (DHCP on) on each
  network and a Neutron port on each (10.101.0.50 asked, VLAN 200's allocated); each port's
  tap is an access port (PVID, untagged) of its VID on br-phys, each subnet's gateway is on
  the VLAN's L3 interface br-phys.<vid>, and dnsmasq has the port's static lease. A guest
  wired to each tap (tap_wire.py, the port's MAC) gets exactly the port's fixed IP by DHCP
  (busybox udhcpc) and pings its gateway; the VLAN 101 guest does not reach the VLAN 200
  guest in a subnet both share (only the VLANs keep them apart); the ports stay DOWN (no VM
  uses them). The SDK's deletes take the taps, lease lines, gateways and dnsmasq's files
  away, then the VIDs.
- bridge_per_vlan (the trunk's backend once its first VLAN has it: br-phys made anew with
  the uplink eth1 and a native VLAN of that backend): the same networks are the per-VLAN
  bridges br-physv101 / br-physv200 with eth1.101 / eth1.200 in them; a Neutron port on
  each (the member's on its tenant VLAN) has its tap in the VLAN's bridge; deletes remove
  taps, bridges and sub-interfaces. (The guests' traffic is left to vlan_filtering: it
  would cost this backend as much nested time again.)

One test, to share the one costly setup (daemon start, the SDK's import).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from app.api.middleware import TcpTransport
from app.main import create_app
from app.settings import Settings
from tests.kernel.nested.conftest import wired_guest
from tests.kernel.nested.test_vlan_guests_daemon import dhcp_lease, pings
from tests.kernel.nested.test_vlans_daemon import lan, memberships, until
from tests.netns_tools import ip, links

__all__ = ["lan"]  # the fixture (uplinks eth0 and eth1 wired to namespace `lan`), by name

_TIER_PLUGIN = Path(__file__).resolve().parents[1] / "conftest.py"
if os.environ.get("KVT_NESTED") != "1" and not _TIER_PLUGIN.is_file():
    pytest.skip(
        "runs only inside the nested Debian kernel of the kernel test tier (tests/kernel)",
        allow_module_level=True,
    )

pytestmark = [
    # openstacksdk 4.22 warns about its own internals on every use: not ours
    pytest.mark.filterwarnings("ignore:::openstack"),
    pytest.mark.filterwarnings("ignore:::keystoneauth1"),
]

TOKEN = "test-token"
PHYSNETS = {"physnet1": "br-phys"}
NATIVE = (True, True)  # VID 1: PVID and untagged (the bridge's default)
TAGGED = (False, False)
ACCESS = (True, True)  # an access port's VLAN: its PVID, egress untagged
SUBNETS = {101: "10.101.0", 200: "10.200.0"}  # each VLAN's subnet (/24; gateway .1)
ASKED = "10.101.0.50"  # the fixed IP VLAN 101's port asks for


@contextlib.contextmanager
def served(netns: str, settings: Settings) -> Iterator[str]:
    """The app acting on `netns`, served over HTTP on 127.0.0.1 (an ephemeral port) as the
    daemon's TCP listener serves it (TcpTransport: a bearer token on every request), with
    its lifespan (supervisor included); yields the base URL. Leaving the block stops it."""
    app = create_app(settings, token=TOKEN, host_netns=netns)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(TcpTransport(app), lifespan="on", log_config=None, access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        until(lambda: server.started or not thread.is_alive(), 120, "uvicorn started")
        assert server.started, "uvicorn did not start"
        assert app.state.supervisor.ready.wait(120)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


def ok(r: httpx.Response, *statuses: int) -> Any:
    assert r.status_code in statuses, r.text
    return r.json() if r.content else None


def sdk(url: str, token: str) -> Any:
    """An openstacksdk Connection as the README's clouds.yaml makes it (auth_type
    admin_token, the Neutron endpoint)."""
    import openstack.config
    import openstack.connection

    cloud = {"auth_type": "admin_token", "auth": {"token": token, "endpoint": f"{url}/networking"}}
    config = openstack.config.OpenStackConfig(load_yaml_config=False)
    region = config.get_one(cloud=None, **cloud)
    return openstack.connection.Connection(config=region)


def native_vlan(http: httpx.Client, network_id: str) -> Any:
    return ok(http.get(f"/v1/vlans/{network_id}"), 200)


# setup and call, under the nested Python on a loaded 2-core machine (load average 9): the
# setup alone took 71-84 s, the call 324 s there (every wait inside is bounded by its `until`)
@pytest.mark.timeout(600)
def test_neutron_vlan_networks_and_ports_on_both_backends(
    netns: str, lan: str, modules: Callable[..., None], settings: Settings
) -> None:
    modules("tun")
    settings = settings.model_copy(
        update={"physical_networks": PHYSNETS, "tenant_network_type": "vlan"}
    )
    started = time.monotonic()
    import openstack  # noqa: F401  (its import is the costly part: measured, done once)

    print(f"import openstack: {time.monotonic() - started:.1f} s", file=sys.stderr)
    with (
        served(netns, settings) as url,
        httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=300
        ) as http,
    ):
        started = time.monotonic()
        admin = sdk(url, TOKEN)
        project = ok(
            http.post("/v1/projects", json={"name": "acme", "vlan_ranges": [[200, 210]]}), 201
        )
        tokens = http.post(f"/v1/projects/{project['id']}/tokens", json={"role": "member"})
        member = sdk(url, ok(tokens, 201)["secret"])
        print(f"two SDK connections: {time.monotonic() - started:.1f} s", file=sys.stderr)
        _filtering(admin, member, http, netns, project["id"], settings.run_dir)
        _bridge_per_vlan(admin, member, http, netns, project["id"])


def _networks(
    admin: Any, member: Any, http: httpx.Client, netns: str, project: str
) -> tuple[Any, Any]:
    """The admin's provider network (segment 101) and the member's tenant network, with what
    each is shown; both VLANs active."""
    prov = admin.network.create_network(
        name="phys101",
        provider_network_type="vlan",
        provider_physical_network="physnet1",
        provider_segmentation_id=101,
    )
    assert (prov.provider_network_type, prov.provider_physical_network) == ("vlan", "physnet1")
    assert prov.provider_segmentation_id == 101
    mine = member.network.create_network(name="mine")
    # provider attributes: hidden from the member (Neutron's policy), shown to the admin
    seen = member.network.get_network(mine.id)
    assert (seen.provider_network_type, seen.provider_segmentation_id) == (None, None)
    assert seen.project_id == project
    shown = admin.network.get_network(mine.id)
    assert (shown.provider_network_type, shown.provider_physical_network) == ("vlan", "physnet1")
    assert shown.provider_segmentation_id == 200  # the lowest of the project's ranges
    assert [n.name for n in member.network.networks()] == ["mine"]
    for net in (prov, mine):
        until(lambda n=net: native_vlan(http, n.id)["status"] == "active", 60, f"{net.name} active")
        assert admin.network.get_network(net.id).status == "ACTIVE"
    return prov, mine


@dataclass(frozen=True)
class Attached:
    """A Neutron port on a VLAN's subnet, as the SDK made it, and its tap's name."""

    port: Any
    tap: str
    address: str  # its fixed IP
    gateway: str  # its subnet's gateway_ip
    subnet_id: str  # the managed network's id


def _attach(
    sdk_of: dict[int, Any], http: httpx.Client, nets: tuple[Any, Any]
) -> dict[int, Attached]:
    """Through each VLAN's owner's SDK: a subnet (DHCP on) and a Neutron port on it, VLAN
    101's with an asked address, VLAN 200's with the allocated one; both settled."""
    attached = {}
    for (vid, conn), net in zip(sdk_of.items(), nets, strict=True):
        subnet = conn.network.create_subnet(
            network_id=net.id, cidr=f"{SUBNETS[vid]}.0/24", ip_version=4, enable_dhcp=True
        )
        assert (subnet.gateway_ip, subnet.is_dhcp_enabled) == (f"{SUBNETS[vid]}.1", True)
        asked = [{"ip_address": ASKED}] if vid == 101 else None
        port = conn.network.create_port(
            network_id=net.id, **({"fixed_ips": asked} if asked else {})
        )
        [fixed] = port.fixed_ips
        assert fixed["subnet_id"] == subnet.id, port
        if vid == 101:
            assert fixed["ip_address"] == ASKED
        else:  # the lowest free address: the gateway is .1
            assert fixed["ip_address"] == f"{SUBNETS[vid]}.2", port
        attached[vid] = Attached(port, "", fixed["ip_address"], subnet.gateway_ip, subnet.id)
    for vid, one in attached.items():
        until(
            lambda n=one.subnet_id: ok(http.get(f"/v1/networks/{n}"), 200)["status"] == "active",
            90,
            f"VLAN {vid}'s subnet (dnsmasq, gateway) active",
        )
        native = until(
            lambda p=one.port.id: _made(ok(http.get(f"/v1/ports/{p}"), 200)),
            60,
            f"VLAN {vid}'s port's tap made",
        )
        attached[vid] = replace(one, tap=native["tap"])
    return attached


def _made(port: dict[str, Any]) -> dict[str, Any] | None:
    """The native port once its tap is made (status active), else None."""
    return port if port["status"] == "active" else None


def _lease_line(run_dir: Path, one: Attached) -> bool:
    """Whether the subnet's dnsmasq has the port's static lease (dhcp-hostsfile, dnsmasq(8):
    `MAC,ADDRESS`), app.host.dnsmasq.DnsmasqPaths."""
    hosts = run_dir / "networks" / one.subnet_id / "dhcp-hosts"
    wanted = f"{one.port.mac_address.lower()},{one.address}"
    lines = hosts.read_text().splitlines() if hosts.is_file() else []
    return any(line.lower().startswith(wanted) for line in lines)


def _segment(backend: str, vid: int) -> str:
    """The link that carries the gateway of VLAN `vid` (the VLAN's l3_interface): the 802.1Q
    link on the trunk with vlan_filtering, the VLAN's own bridge with bridge_per_vlan."""
    return f"br-phys.{vid}" if backend == "vlan_filtering" else f"br-physv{vid}"


def _on_its_vlan(netns: str, backend: str, tap: str, vid: int) -> None:
    """The tap an access port of VID `vid` (PVID, untagged) of the trunk, or a port of the
    VLAN's own bridge."""
    if backend == "vlan_filtering":
        assert links(netns)[tap].master == "br-phys"
        until(
            lambda: memberships(netns, "br-phys").get(tap) == {vid: ACCESS},
            30,
            f"{tap} an access port of VID {vid}",
        )
    else:
        until(lambda: links(netns)[tap].master == f"br-physv{vid}", 30, f"{tap} in br-physv{vid}")


def _guests(
    sdk_of: dict[int, Any],
    http: httpx.Client,
    netns: str,
    run_dir: Path,
    nets: tuple[Any, Any],
    backend: str,
) -> None:
    """A subnet and a Neutron port on each VLAN network, a guest on each port's tap: DHCP
    gives it exactly the port's fixed IP (dnsmasq's static lease), it pings its gateway on
    the VLAN's L3 interface and not the other VLAN's guest; SDK deletes of the ports and
    subnets take the taps, lease lines and gateways away."""
    started = time.monotonic()
    attached = _attach(sdk_of, http, nets)
    print(f"{backend}: subnets and ports: {time.monotonic() - started:.1f} s", file=sys.stderr)
    kernel = links(netns)
    for vid, one in attached.items():
        assert native_vlan(http, one.port.network_id)["l3_interface"] == _segment(backend, vid)
        assert f"{one.gateway}/24" in kernel[_segment(backend, vid)].addresses, kernel
        _on_its_vlan(netns, backend, one.tap, vid)
        until(lambda o=one: _lease_line(run_dir, o), 30, f"VLAN {vid}'s port's lease line")
    with contextlib.ExitStack() as stack:
        guests = {
            vid: stack.enter_context(wired_guest(netns, one.tap, one.port.mac_address))
            for vid, one in attached.items()
        }
        for vid, one in attached.items():
            assert dhcp_lease(guests[vid]) == one.address, f"VLAN {vid}: not the port's fixed IP"
            ip(guests[vid], "addr", "add", f"{one.address}/24", "dev", "eth0")
            assert pings(guests[vid], one.gateway), f"VLAN {vid}'s guest -> its gateway"
            # ACTIVE is a VM's port whose tap has carrier (app.domain.ports.port_status);
            # a tap held by no VM's qemu stays DOWN, carrier or not
            assert sdk_of[vid].network.get_port(one.port.id).status == "DOWN"
        # isolation at L2: both guests in one extra subnet (RFC 5737 TEST-NET-1); only the
        # VLANs keep them apart (the host has no address there to route through)
        for vid, address in zip(attached, ("192.0.2.1/24", "192.0.2.2/24"), strict=True):
            ip(guests[vid], "addr", "add", address, "dev", "eth0")
        assert not pings(guests[101], "192.0.2.2", tries=1), "VLAN 101's guest reached VLAN 200's"
        print(f"{backend}: guests' traffic: {time.monotonic() - started:.1f} s", file=sys.stderr)
        # -- deletes through the SDK (the guests still wired): taps and lease lines go
        for vid, one in attached.items():
            sdk_of[vid].network.delete_port(one.port.id)
        for vid, one in attached.items():
            until(lambda t=one.tap: t not in links(netns), 30, f"VLAN {vid}'s port's tap gone")
            until(lambda o=one: not _lease_line(run_dir, o), 30, f"VLAN {vid}'s lease line gone")
    for vid, one in attached.items():
        sdk_of[vid].network.delete_subnet(one.subnet_id)
    until(
        lambda: (
            not {f"{o.gateway}/24" for o in attached.values()}
            & {a for link in links(netns).values() for a in link.addresses}
        ),
        30,
        "the subnets' gateways gone",
    )
    for one in attached.values():
        until(
            lambda o=one: not (run_dir / "networks" / o.subnet_id).exists(),
            30,
            "dnsmasq's dir gone",
        )
    print(f"{backend}: guests, all deleted: {time.monotonic() - started:.1f} s", file=sys.stderr)


def _ports_only(
    sdk_of: dict[int, Any], http: httpx.Client, netns: str, nets: tuple[Any, Any], backend: str
) -> None:
    """A Neutron port on each VLAN network (no subnet: no fixed IP), through its owner's
    SDK: each tap on its VLAN; the SDK's deletes take the taps away. (The guests' traffic,
    which _guests proves on vlan_filtering, would cost this backend as much again.)"""
    ports = {
        vid: conn.network.create_port(network_id=net.id)
        for (vid, conn), net in zip(sdk_of.items(), nets, strict=True)
    }
    for (vid, port), net in zip(ports.items(), nets, strict=True):
        assert (port.network_id, port.fixed_ips) == (net.id, []), port
        native = until(
            lambda p=port.id: _made(ok(http.get(f"/v1/ports/{p}"), 200)),
            60,
            f"VLAN {vid}'s port's tap made",
        )
        _on_its_vlan(netns, backend, native["tap"], vid)
        sdk_of[vid].network.delete_port(port.id)
        until(lambda t=native["tap"]: t not in links(netns), 30, f"VLAN {vid}'s port's tap gone")


def _filtering(
    admin: Any, member: Any, http: httpx.Client, netns: str, project: str, run_dir: Path
) -> None:
    prov, mine = _networks(admin, member, http, netns, project)
    assert native_vlan(http, prov.id)["backend"] == "vlan_filtering"
    kernel = links(netns)
    assert kernel["br-phys"].kind == "bridge"  # made for the physnet by the first create
    r = http.put(
        "/v1/bridges/br-phys/uplink?wait=60",
        json={"interface": "eth0", "probe_address": "10.60.0.1"},
    )
    assert ok(r, 200, 201)["status"] == "active", r.text
    until(
        lambda: memberships(netns, "br-phys").get("eth0", {}).get(200) == TAGGED,
        30,
        "VIDs 101 and 200 tagged on the uplink",
    )
    ports = memberships(netns, "br-phys")
    assert ports["eth0"] == {1: NATIVE, 101: TAGGED, 200: TAGGED}, ports
    _guests({101: admin, 200: member}, http, netns, run_dir, (prov, mine), "vlan_filtering")
    # -- deletes take the VIDs off the trunk
    member.network.delete_network(mine.id)
    admin.network.delete_network(prov.id)
    until(
        lambda: memberships(netns, "br-phys").get("eth0") == {1: NATIVE},
        30,
        "VIDs 101 and 200 gone from the uplink",
    )
    assert list(admin.network.networks(provider_network_type="vlan")) == []


def _bridge_per_vlan(admin: Any, member: Any, http: httpx.Client, netns: str, project: str) -> None:
    # br-phys anew, on eth1, its backend fixed by its first VLAN (a native one)
    ok(http.delete("/v1/bridges/br-phys?force=true&wait=60"), 204)  # detaches eth0
    until(lambda: "br-phys" not in links(netns), 30, "br-phys gone")
    ok(http.post("/v1/bridges?wait=60", json={"name": "br-phys"}), 201)
    r = http.put(
        "/v1/bridges/br-phys/uplink?wait=60",
        json={"interface": "eth1", "probe_address": "10.61.0.1"},
    )
    assert ok(r, 200, 201)["status"] == "active", r.text
    pin = {"name": "pin", "vlan_id": 99, "trunk": "br-phys", "backend": "bridge_per_vlan"}
    ok(http.post("/v1/vlans?wait=60", json=pin), 201)
    prov, mine = _networks(admin, member, http, netns, project)
    assert native_vlan(http, prov.id)["backend"] == "bridge_per_vlan"
    kernel = links(netns)
    for vid in (101, 200):
        vbr, sub = kernel[f"br-physv{vid}"], kernel[f"eth1.{vid}"]
        assert vbr.kind == "bridge" and sub.kind == "vlan", (vbr, sub)
        assert sub.info.get("IFLA_VLAN_ID") == vid and sub.master == f"br-physv{vid}"
    _ports_only({101: admin, 200: member}, http, netns, (prov, mine), "bridge_per_vlan")
    member.network.delete_network(mine.id)
    admin.network.delete_network(prov.id)
    gone = ("br-physv101", "eth1.101", "br-physv200", "eth1.200")
    until(
        lambda: not set(gone) & set(links(netns)), 30, "the VLANs' bridges and sub-interfaces gone"
    )
    kernel = links(netns)
    assert kernel["br-physv99"].kind == "bridge" and kernel["eth1.99"].master == "br-physv99"
