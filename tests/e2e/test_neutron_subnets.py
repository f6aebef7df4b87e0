"""Neutron subnets and quotas through the real clients (issue 12): the `openstack` CLI and
openstacksdk against one real daemon over TCP in a namespace; the kernel (the gateway
address on the bridge, through netlink) and dnsmasq (its pid alive in the namespace, the
dhcp-option lines of its config) read back. No hand-written HTTP to the Neutron API (the
native API only sets up a project and its member token).

The daemon, its namespace and the client helpers are tests/e2e/test_neutron_networks.py's
(one daemon for this module)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from openstack import exceptions as sdk_errors

from app.host.netns import call_in as in_netns
from tests.e2e import test_neutron_networks as networks
from tests.e2e.helpers import E2EDaemon, wait_for
from tests.e2e.test_neutron_networks import _member, admin_token, brq, cli, cli_json, connect
from tests.netns_tools import links, processes_in

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore:::openstack")]
# the networks module's fixtures: a namespace and a daemon with a physnet, one for this module
netns = networks.netns
daemon = networks.daemon


def dnsmasq(daemon: E2EDaemon, subnet_id: str) -> Path:
    """The run directory of the subnet's dnsmasq (app.host.dnsmasq DnsmasqPaths)."""
    return daemon.run_dir / "networks" / subnet_id


def serving(netns: str, daemon: E2EDaemon, subnet_id: str, *lines: str) -> bool:
    """dnsmasq runs for the subnet in the namespace and its config has `lines`."""
    where = dnsmasq(daemon, subnet_id)
    try:
        pid = int(where.joinpath("dnsmasq.pid").read_text().strip())
        conf = where.joinpath("dnsmasq.conf").read_text().splitlines()
    except (OSError, ValueError):
        return False
    return pid in processes_in(netns) and all(line in conf for line in lines)


def addresses(netns: str, ifname: str) -> list[str]:
    link = links(netns).get(ifname)
    return link.addresses if link is not None else []


def test_the_openstack_cli_manages_subnets_that_dnsmasq_serves(
    netns: str,
    daemon: E2EDaemon,
) -> None:
    token = admin_token(daemon)
    net = cli_json(netns, token, "network", "create", "net1")
    bridge = brq(net["id"])
    sub = cli_json(
        netns,
        token,
        *("subnet", "create", "--network", "net1", "--subnet-range", "10.10.0.0/24"),
        *("--dns-nameserver", "10.10.0.1", "sub1"),
    )
    assert (sub["cidr"], sub["gateway_ip"], sub["network_id"]) == (
        "10.10.0.0/24",
        "10.10.0.1",
        net["id"],
    )
    assert sub["allocation_pools"] == [{"start": "10.10.0.2", "end": "10.10.0.254"}]
    wait_for(lambda: "10.10.0.1/24" in addresses(netns, bridge), 15, "the gateway on the bridge")
    options = ("dhcp-option=option:router,10.10.0.1", "dhcp-option=option:dns-server,10.10.0.1")
    wait_for(lambda: serving(netns, daemon, sub["id"], *options), 15, "dnsmasq serving sub1")

    listed = cli_json(netns, token, "subnet", "list")
    assert [(s["Name"], s["Subnet"], s["Network"]) for s in listed] == [
        ("sub1", "10.10.0.0/24", net["id"])
    ]
    route = "destination=10.99.0.0/16,gateway=10.10.0.254"
    done = cli(
        netns,
        token,
        *("subnet", "set", "--name", "sub2", "--dns-nameserver", "10.10.0.53"),
        *("--host-route", route, "sub1"),
    )
    assert done.returncode == 0, done.stderr
    shown = cli_json(netns, token, "subnet", "show", "sub2")  # by name: 404 on the id first
    assert shown["dns_nameservers"] == ["10.10.0.53", "10.10.0.1"]  # the CLI adds in front
    assert shown["host_routes"] == [{"destination": "10.99.0.0/16", "nexthop": "10.10.0.254"}]
    assert shown["revision_number"] == 2
    changed = (
        "dhcp-option=option:dns-server,10.10.0.53,10.10.0.1",
        # RFC 3442: the route, then the default route through the gateway
        "dhcp-option=option:classless-static-route,10.99.0.0/16,10.10.0.254,0.0.0.0/0,10.10.0.1",
    )
    wait_for(lambda: serving(netns, daemon, sub["id"], *changed), 15, "dnsmasq with the changes")

    missing = cli(netns, token, "subnet", "show", "nosuch")
    assert missing.returncode == 1 and "No Subnet found for nosuch" in missing.stderr
    pid = int(dnsmasq(daemon, sub["id"]).joinpath("dnsmasq.pid").read_text())
    done = cli(netns, token, "subnet", "delete", "sub2")
    assert done.returncode == 0, done.stderr
    wait_for(lambda: pid not in processes_in(netns), 15, "the subnet's dnsmasq gone")
    wait_for(lambda: "10.10.0.1/24" not in addresses(netns, bridge), 15, "the gateway gone")


def _sdk_session(tmp_path: Path, admin: str, member: str, project: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    conn = connect(tmp_path, admin)
    nets = [conn.network.create_network(name=f"sn{i}") for i in range(3)]
    made = [
        conn.network.create_subnet(
            network_id=net.id, ip_version=4, cidr=f"10.20.{i}.0/24", name=f"ss{i}"
        )
        for i, net in enumerate(nets)
    ]
    seen["made"] = [(s.name, s.gateway_ip, s.is_dhcp_enabled) for s in made]
    seen["paged"] = [s.name for s in conn.network.subnets(limit=1)]
    seen["found"] = conn.network.find_subnet("ss1").id == made[1].id
    before = made[0].revision_number
    renamed = conn.network.update_subnet(made[0], name="first", if_revision=before)
    seen["renamed"] = (renamed.name, renamed.revision_number)
    try:
        conn.network.update_subnet(made[0].id, name="again", if_revision=before)
    except sdk_errors.HttpException as exc:
        seen["stale"] = (type(exc).__name__, exc.status_code)
    try:
        conn.network.get_subnet(str(uuid.uuid4()))
    except sdk_errors.NotFoundException as exc:
        seen["unknown"] = exc.status_code

    # quotas: Neutron's network is our segments quota
    seen["default"] = conn.network.get_quota(project).networks
    conn.network.update_quota(project, networks=1)
    seen["set"] = conn.network.get_quota(project).networks
    as_member = connect(tmp_path, member)
    as_member.network.create_network(name="only")
    try:
        as_member.network.create_network(name="second")
    except sdk_errors.ConflictException as exc:
        seen["over"] = (exc.status_code, str(exc.details))
    details = conn.network.get_quota(project, details=True)
    seen["details"] = details.networks
    seen["listed"] = [q.project_id for q in conn.network.quotas()]
    conn.network.delete_quota(project)
    seen["reset"] = conn.network.get_quota(project).networks
    return seen


def test_openstacksdk_creates_pages_and_guards_subnets_and_enforces_quotas(
    netns: str,
    daemon: E2EDaemon,
    tmp_path: Path,
) -> None:
    member = _member(daemon)
    with daemon.client() as http:
        project = http.get("/v1/projects/acme").json()["id"]
    seen = in_netns(netns, lambda: _sdk_session(tmp_path, admin_token(daemon), member, project))
    assert seen["made"] == [(f"ss{i}", f"10.20.{i}.1", True) for i in range(3)]
    assert seen["paged"] == ["ss0", "ss1", "ss2"]  # pages of one, through subnets_links
    assert seen["found"]
    assert seen["renamed"] == ("first", 2)
    assert seen["stale"] == ("PreconditionFailedException", 412)
    assert seen["unknown"] == 404
    assert (seen["default"], seen["set"]) == (-1, 1)
    assert seen["over"][0] == 409
    assert seen["over"][1].startswith("Quota exceeded for resources: ['network'].")
    assert seen["details"] == {"used": 1, "limit": 1, "reserved": 0}
    assert seen["listed"] == [project]
    assert seen["reset"] == -1
