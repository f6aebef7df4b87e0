"""Neutron `vlan` networks and native ports on them, on a kernel that has 802.1Q and bridge
VLAN filtering (Debian's own, booted by the kernel test tier), driven by the real client:
openstacksdk against the app served over HTTP (uvicorn on the nested host's loopback, as the
daemon's TCP listener serves it), settings physical_networks {"physnet1": "br-phys"} and
tenant_network_type vlan. Everything the SDK makes is read back through netlink.

- vlan_filtering (what `auto` picks on this kernel): the admin's provider network (vlan,
  physnet1, segment 101) creates br-phys and VID 101 on its trunk port (the uplink eth0); a
  member of a project with vlan_ranges [[200, 210]] gets VID 200 without provider
  attributes, which its view omits; a native port on VLAN 101 is an access port (PVID 101,
  untagged) of br-phys; deletes take the tap and the VIDs away.
- bridge_per_vlan (the trunk's backend once its first VLAN has it: br-phys made anew with
  the uplink eth1 and a native VLAN of that backend): the same networks are the per-VLAN
  bridges br-physv101 / br-physv200 with eth1.101 / eth1.200 in them; the port's tap joins
  br-physv101; deletes remove bridges and sub-interfaces.

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
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from app.api.middleware import TcpTransport
from app.main import create_app
from app.settings import Settings
from tests.kernel.nested.test_vlans_daemon import lan, memberships, until
from tests.netns_tools import links

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
        _filtering(admin, member, http, netns, project["id"])
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


def _port(http: httpx.Client, network_id: str) -> Any:
    body = {"name": "p101", "vlan": network_id, "fixed_ip": False}
    port = ok(http.post("/v1/ports?wait=60", json=body), 201)
    assert port["status"] in ("down", "active"), port
    return port


def _delete_port(http: httpx.Client, netns: str, port: Any) -> None:
    ok(http.delete(f"/v1/ports/{port['id']}?wait=60"), 204)
    until(lambda: port["tap"] not in links(netns), 30, "the port's tap gone")


def _filtering(admin: Any, member: Any, http: httpx.Client, netns: str, project: str) -> None:
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
    # -- a native port on VLAN 101: its tap is an access port (PVID 101, untagged)
    port = _port(http, prov.id)
    assert links(netns)[port["tap"]].master == "br-phys"
    until(
        lambda: memberships(netns, "br-phys").get(port["tap"]) == {101: ACCESS},
        30,
        "the tap an access port of VID 101",
    )
    _delete_port(http, netns, port)
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
    # -- a native port on VLAN 101: its tap is a port of the VLAN's own bridge
    port = _port(http, prov.id)
    until(
        lambda: links(netns)[port["tap"]].master == "br-physv101",
        30,
        "the tap in br-physv101",
    )
    _delete_port(http, netns, port)
    member.network.delete_network(mine.id)
    admin.network.delete_network(prov.id)
    gone = ("br-physv101", "eth1.101", "br-physv200", "eth1.200")
    until(
        lambda: not set(gone) & set(links(netns)), 30, "the VLANs' bridges and sub-interfaces gone"
    )
    kernel = links(netns)
    assert kernel["br-physv99"].kind == "bridge" and kernel["eth1.99"].master == "br-physv99"
