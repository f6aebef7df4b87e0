"""Neutron ports through the real clients (issue 12): the `openstack` CLI (a subprocess) and
openstacksdk (in this process) against one real daemon over TCP in a namespace. The kernel
is read back through netlink (the port's tap `tap` + 11 hex digits on the network's
bridge) and dnsmasq's hosts file shows the port's static lease. No hand-written HTTP to the
Neutron API: only the native /v1 side (setup, and the agreement check) is plain HTTP.

The managed network is made natively (the Neutron subnets route is another helper's): the
CLI's `--fixed-ip ip-address=...` needs no subnet lookup."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from openstack import exceptions as sdk_errors

from app.host.netns import call_in as in_netns
from tests.e2e.helpers import E2EDaemon, kernel_link, ok, wait_for
from tests.e2e.test_neutron_networks import (
    _member,
    admin_token,
    cli,
    cli_json,
    connect,
    daemon,
    netns,
)
from tests.netns_tools import links

__all__ = ["daemon", "netns"]  # the module's fixtures (one daemon for the module)

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore:::openstack")]

SUBNET = "10.10.0.0/24"  # the native network's DHCP range: 10.10.0.128-10.10.0.254
FIXED = "10.10.0.20"


def tap_of(port_id: str) -> str:
    return "tap" + uuid.UUID(port_id).hex[:11]


@pytest.fixture(scope="module")
def lan(daemon: E2EDaemon) -> tuple[str, dict[str, Any]]:
    """The bridge lan1 (a `local` Neutron network) and its managed network, natively."""
    with daemon.client() as http:
        bridge = ok(http.post("/v1/bridges?wait=10", json={"name": "lan1"}), 201)
        body = {"name": "lan1net", "bridge": "lan1", "subnet": SUBNET}
        network = ok(http.post("/v1/networks?wait=10", json=body), 201)
    return str(bridge["id"]), network


def hosts_file(daemon: E2EDaemon, network: dict[str, Any]) -> str:
    path = daemon.run_dir / "networks" / str(network["id"]) / "dhcp-hosts"
    return path.read_text() if path.exists() else ""


def test_the_openstack_cli_manages_ports_that_are_taps(
    netns: str, daemon: E2EDaemon, lan: tuple[str, dict[str, Any]]
) -> None:
    token = admin_token(daemon)
    network_id, network = lan
    made = cli_json(
        netns, token, "port", "create", "--network", "lan1", "--fixed-ip",
        f"ip-address={FIXED}", "--tag", "blue", "p1",
    )  # fmt: skip
    assert made["status"] in ("DOWN", "BUILD") and made["network_id"] == network_id, made
    assert made["fixed_ips"] == [{"subnet_id": network["id"], "ip_address": FIXED}], made
    tap = tap_of(made["id"])
    kernel_link(netns, tap, 10, lambda link: link.kind == "tun" and link.master == "lan1")
    # the static lease, with the port's MAC, while no VM uses the port
    line = f"{made['mac_address']},{FIXED}"
    wait_for(lambda: line in hosts_file(daemon, network), 10, "the port's dhcp-host line")

    listed = cli_json(netns, token, "port", "list", "--long")
    by_name = {row["Name"]: row for row in listed}
    assert set(by_name) == {"p1"}, listed
    assert by_name["p1"]["MAC Address"] == made["mac_address"]
    assert by_name["p1"]["Tags"] == ["blue"]
    shown = cli_json(netns, token, "port", "show", "p1")  # by name: 404 on the id, then ?name=
    assert shown["id"] == made["id"] and shown["binding_vif_type"] == "tap", shown

    done = cli(netns, token, "port", "set", "--name", "p2", "--tag", "green", "p1")
    assert done.returncode == 0, done.stderr
    renamed = cli_json(netns, token, "port", "show", made["id"])
    assert (renamed["name"], sorted(renamed["tags"])) == ("p2", ["blue", "green"])

    # a port made natively is in the CLI's list, with its MAC and fixed address
    with daemon.client() as http:
        body = {"name": "native1", "bridge": "lan1", "ipv4": "10.10.0.21"}
        native = ok(http.post("/v1/ports?wait=10", json=body), 201)
        seen = {p["id"]: p for p in ok(http.get("/v1/ports"), 200)["items"]}
    assert seen[made["id"]]["ipv4"] == FIXED and seen[made["id"]]["tap"] == tap
    listed = {row["ID"]: row for row in cli_json(netns, token, "port", "list", "--long")}
    assert listed[native["id"]]["MAC Address"] == native["mac_address"]
    assert "10.10.0.21" in str(listed[native["id"]]["Fixed IP Addresses"])

    missing = cli(netns, token, "port", "show", "nosuch")
    assert missing.returncode == 1 and "No Port found for nosuch" in missing.stderr
    for port in ("p2", native["id"]):
        done = cli(netns, token, "port", "delete", port)
        assert done.returncode == 0, done.stderr
    wait_for(lambda: tap not in links(netns), 10, "the deleted port's tap gone")
    wait_for(lambda: line not in hosts_file(daemon, network), 10, "its dhcp-host line gone")


def _sdk_session(tmp_path: Path, admin: str, member: str, network_id: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    conn = connect(tmp_path, admin)
    made = [conn.network.create_port(network_id=network_id, name=f"s{i}") for i in range(5)]
    seen["paged"] = [p.name for p in conn.network.ports(limit=2)]
    seen["all"] = [p.name for p in conn.network.ports()]
    seen["by_ip"] = [
        p.name
        for p in conn.network.ports(fixed_ips=f"ip_address={made[2].fixed_ips[0]['ip_address']}")
    ]
    try:
        conn.network.get_port(str(uuid.uuid4()))
    except sdk_errors.NotFoundException as exc:
        seen["unknown"] = exc.status_code
    as_member = connect(tmp_path, member)
    seen["member_sees"] = [p.name for p in as_member.network.ports()]
    seen["member_finds_admins"] = as_member.network.find_port(made[0].id)
    for port in made:
        conn.network.delete_port(port)
    seen["left"] = [p.name for p in conn.network.ports()]
    return seen


def test_openstacksdk_pages_ports_and_a_member_sees_only_its_own(
    netns: str, daemon: E2EDaemon, lan: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    network_id = lan[0]
    member = _member(daemon)
    seen = in_netns(netns, lambda: _sdk_session(tmp_path, admin_token(daemon), member, network_id))
    names = [f"s{i}" for i in range(5)]
    assert seen["paged"] == seen["all"] == names  # pages of 2 through ports_links
    assert seen["by_ip"] == ["s2"]
    assert seen["unknown"] == 404
    assert seen["member_sees"] == [] and seen["member_finds_admins"] is None
    assert seen["left"] == []
