"""What a managed network's DHCP tells the guests besides their address (Neutron's subnet
dns_nameservers and host_routes), on the real kernel of a fresh namespace with a real dnsmasq
and a real DHCP client: busybox udhcpc in a namespace of its own, cabled to the network's
bridge, whose event script writes what it was told (udhcpc exports option 6 as `dns` and
option 121 as `staticroutes`) to a file.

- the nameservers and routes given are what the client receives, the default route
  through the gateway with them (RFC 3442: option 121 replaces the router option);
- a PATCH that clears them restarts dnsmasq and the next client gets the gateway as its
  DNS server and no option 121;
- bad lists are refused (422) and store nothing; null means [];
- the name (unique per project) and description change in place;
- a stored list the worker cannot use is reported on the network, and a PATCH heals it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.settings import Settings
from tests.api.test_addresses_api import client_on_bridge, eventually
from tests.api.test_links_api import make_bridge
from tests.api.test_networks_api import make_network
from tests.netns_tools import in_netns

ROUTES = [
    {"destination": "10.20.0.0/16", "nexthop": "10.91.0.254"},
    {"destination": "192.168.7.0/24", "nexthop": "10.91.0.253"},
]


def dhcp_environment(client: str, script_dir: Path) -> dict[str, str]:
    """The environment udhcpc hands its script on `bound` (asking for option 121 too:
    busybox does not by default), as a dict."""
    out = script_dir / "bound.env"
    out.unlink(missing_ok=True)
    script = script_dir / "udhcpc-script"
    script.write_text(f'#!/bin/sh\n[ "$1" = bound ] && env > {out}\nexit 0\n')
    script.chmod(0o755)
    result = in_netns(
        client,
        *("busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "10", "-T", "1"),
        *("-O", "staticroutes", "-s", str(script)),
    )
    assert out.exists(), f"udhcpc got no lease: {result.stdout}{result.stderr}"
    pairs = (line.partition("=") for line in out.read_text().splitlines())
    return {key: value for key, _, value in pairs}


def static_routes(env: dict[str, str]) -> list[tuple[str, str]]:
    """udhcpc's `staticroutes`: "dest/len gw dest/len gw ..." as (dest, gw) pairs."""
    words = env.get("staticroutes", "").split()
    return list(zip(words[::2], words[1::2], strict=True))


def test_a_dhcp_client_gets_the_nameservers_and_routes(
    api: TestClient, netns: str, tmp_path: Path
) -> None:
    make_bridge(api)
    network = make_network(api, dns_nameservers=["10.91.0.53", "192.0.2.53"], host_routes=ROUTES)
    assert network["dns_nameservers"] == ["10.91.0.53", "192.0.2.53"]
    assert network["host_routes"] == ROUTES
    pid = network["dnsmasq_pid"]
    with client_on_bridge(netns, "br0", "02:00:00:00:cd:01") as client:
        env = dhcp_environment(client, tmp_path)
    assert env["dns"].split() == ["10.91.0.53", "192.0.2.53"], env
    assert static_routes(env) == [
        ("10.20.0.0/16", "10.91.0.254"),
        ("192.168.7.0/24", "10.91.0.253"),
        ("0.0.0.0/0", "10.91.0.1"),  # the default route, which option 121 would drop
    ], env

    # cleared (null means []): dnsmasq restarts; the gateway serves DNS, no option 121
    r = api.patch("/v1/networks/nat0?wait=10", json={"dns_nameservers": None, "host_routes": None})
    assert r.status_code == 200, r.text
    assert (r.json()["dns_nameservers"], r.json()["host_routes"]) == ([], [])
    assert r.json()["dnsmasq_pid"] not in (None, pid)
    with client_on_bridge(netns, "br0", "02:00:00:00:cd:02") as client:
        env = dhcp_environment(client, tmp_path)
    assert env["dns"].split() == ["10.91.0.1"], env
    assert "staticroutes" not in env, env
    assert env["router"].split() == ["10.91.0.1"], env

    # a default route of the user's own replaces the one through the gateway
    own_default = [{"destination": "0.0.0.0/0", "nexthop": "10.91.0.254"}]
    r = api.patch("/v1/networks/nat0?wait=10", json={"host_routes": own_default})
    assert r.status_code == 200, r.text
    with client_on_bridge(netns, "br0", "02:00:00:00:cd:03") as client:
        env = dhcp_environment(client, tmp_path)
    assert static_routes(env) == [("0.0.0.0/0", "10.91.0.254")], env


ROUTE = {"destination": "10.20.0.0/16", "nexthop": "10.91.0.254"}


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("dns_nameservers", [f"10.0.0.{i}" for i in range(1, 7)], "at most 5"),
        ("dns_nameservers", ["10.0.0.1", "10.0.0.1"], "10.0.0.1 twice"),
        ("dns_nameservers", ["10.0.0.300"], "not an IPv4 address"),
        ("dns_nameservers", ["224.0.0.1"], "not a unicast address"),
        ("host_routes", [{**ROUTE, "destination": "10.20.0.1/16"}], "host bits set"),
        ("host_routes", [{**ROUTE, "destination": "fd00::/8"}], "not an IPv4 network"),
        ("host_routes", [{**ROUTE, "nexthop": "10.92.0.1"}], "outside the subnet"),
        ("host_routes", [{**ROUTE, "nexthop": "10.91.0.255"}], "broadcast"),
        ("host_routes", [ROUTE, {**ROUTE, "nexthop": "10.91.0.9"}], "10.20.0.0/16 twice"),
        (
            "host_routes",
            [{"destination": f"10.{i}.0.0/16", "nexthop": "10.91.0.9"} for i in range(21)],
            "at most 20",
        ),
        ("host_routes", [{"destination": "10.20.0.0/16"}], "nexthop"),
    ],
)
def test_bad_lists_are_refused_and_store_nothing(
    api: TestClient, field: str, value: Any, said: str
) -> None:
    make_bridge(api)
    body = {"name": "nat0", "bridge": "br0", "subnet": "10.91.0.0/24", field: value}
    r = api.post("/v1/networks", json=body)
    assert r.status_code == 422, r.text
    assert said in r.text, r.text
    assert api.get("/v1/networks").json()["items"] == []
    make_network(api, **{field: None})  # null: []
    assert api.get("/v1/networks/nat0").json()[field] == []
    r = api.patch("/v1/networks/nat0", json={field: value})
    assert r.status_code == 422, r.text
    assert said in r.text, r.text
    shown = api.get("/v1/networks/nat0").json()
    assert (shown[field], shown["generation"]) == ([], 1)


def test_name_and_description_change_in_place(api: TestClient) -> None:
    make_bridge(api)
    network = make_network(api, description="office LAN")
    assert network["description"] == "office LAN"
    assert api.post("/v1/bridges", json={"name": "br1"}).status_code == 202
    r = api.post(
        "/v1/networks?wait=10", json={"name": "other", "bridge": "br1", "subnet": "10.92.0.0/24"}
    )
    assert r.status_code == 201, r.text
    r = api.patch("/v1/networks/nat0", json={"name": "OTHER"})
    assert r.status_code == 409 and "name-taken" in r.json()["type"], r.text
    r = api.patch("/v1/networks/nat0?wait=10", json={"name": "lan", "description": None})
    assert r.status_code == 200, r.text
    assert (r.json()["name"], r.json()["description"]) == ("lan", None)
    assert r.json()["generation"] == network["generation"] + 1  # a change, as Neutron's revision
    assert api.get(f"/v1/networks/{network['id']}").json()["name"] == "lan"
    assert api.patch("/v1/networks/lan", json={"name": None}).status_code == 422


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("host_routes", '[{"destination": "10.20.0.0/16", "nexthop": "10.1.2.3"}]'),
        ("host_routes", '"garbage{"'),
        ("dns_nameservers", '["not an address"]'),
    ],
)
def test_a_stored_list_the_worker_cannot_use_is_reported_and_a_patch_heals_it(
    api: TestClient, settings: Settings, column: str, value: str
) -> None:
    """A row written past the API (by hand, past the CHECKs) is reported on the network,
    whose GET still answers; a PATCH that sets the list again makes it active again."""
    make_bridge(api)
    network = make_network(api)
    with sqlite3.connect(settings.state_dir / "kvmnetd.db") as conn:
        conn.execute("PRAGMA ignore_check_constraints = ON")
        conn.execute(f"UPDATE networks SET {column} = ? WHERE id = ?", (value, network["id"]))
    api.app.state.network_worker.resync()  # type: ignore[attr-defined]
    shown = eventually(
        lambda: (r := api.get("/v1/networks/nat0").json())["status"] == "error" and r
    )
    assert shown and column in shown["status_reason"], shown
    r = api.patch("/v1/networks/nat0?wait=10", json={column: []})
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()[column]) == ("active", [])
