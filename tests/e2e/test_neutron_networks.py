"""Neutron networks through the real clients (issue 12): the `openstack` CLI
(python-openstackclient, run as a subprocess) and openstacksdk (in this process) against the
real daemon over TCP in a namespace, with the kernel read back through netlink. No
hand-written HTTP to the Neutron API here: the clients decide what is sent (the native API
only sets up a project and its member token).

The daemon's physical network comes from its environment (KVMNETD_PHYSICAL_NETWORKS). This
kernel has no 802.1Q and no VLAN filtering: a `vlan` network is a clear 400 here; the VLAN
path's proof on a kernel that has them is the kernel tier's (wave 2)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openstack
import openstack.config
import pytest
from openstack import exceptions as sdk_errors

from app.host.netns import call_in as in_netns
from tests.e2e.helpers import E2EDaemon, kernel_link, wait_for
from tests.netns_tools import links, throwaway_netns

pytestmark = [
    pytest.mark.e2e,
    # openstacksdk 4.22 warns about its own internals on every use (InfluxDB on every
    # connection, configured or not; _compute_attributes on every resource): not ours
    pytest.mark.filterwarnings("ignore:::openstack"),
]

LISTEN = "127.0.0.1:8080"  # inside the test's namespace
ENDPOINT = f"http://{LISTEN}/networking"
OPENSTACK = Path(sys.executable).with_name("openstack")
PHYSNETS = {"physnet1": "br-phys"}


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    """One namespace and one daemon for the module (its start is ~10 s on a busy host)."""
    with throwaway_netns() as name:
        yield name


@pytest.fixture(scope="module")
def daemon(
    netns: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[E2EDaemon]:
    daemon = E2EDaemon(netns, tmp_path_factory.mktemp("neutron"))
    daemon.extra_env = {
        "KVMNETD_LISTEN": LISTEN,
        "KVMNETD_PHYSICAL_NETWORKS": json.dumps(PHYSNETS),
    }
    failures = request.session.testsfailed
    try:
        yield daemon.start()
    finally:
        daemon.kill()
        if request.session.testsfailed > failures:
            print(f"--- daemon log ({daemon.log}) ---\n{daemon.logs()[-20000:]}")


def admin_token(daemon: E2EDaemon) -> str:
    return daemon.state_dir.joinpath("admin-token").read_text().strip()


def cli(netns: str, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`openstack --os-token T --os-endpoint .../networking ARGS` in the namespace."""
    argv = ["ip", "netns", "exec", netns, str(OPENSTACK)]
    argv += ["--os-token", token, "--os-endpoint", ENDPOINT, *args]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}
    return subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, env=env
    )


def cli_json(netns: str, token: str, *args: str) -> Any:
    done = cli(netns, token, *args, "-f", "json")
    assert done.returncode == 0, (args, done.stderr)
    return json.loads(done.stdout)


def brq(network_id: str) -> str:
    return "brq" + uuid.UUID(network_id).hex[:11]


def test_the_openstack_cli_manages_networks_that_are_bridges(netns: str, daemon: E2EDaemon) -> None:
    token = admin_token(daemon)
    lan = cli_json(netns, token, "network", "create", "--tag", "blue", "--tag", "red", "lan1")
    assert lan["provider:network_type"] == "local" and lan["status"] == "ACTIVE"
    kernel_link(netns, brq(lan["id"]), 10, lambda link: link.kind == "bridge")

    flat = ["--provider-network-type", "flat", "--provider-physical-network", "physnet1"]
    ext = cli_json(netns, token, "network", "create", *flat, "ext")
    assert (ext["provider:network_type"], ext["provider:physical_network"]) == ("flat", "physnet1")
    kernel_link(netns, "br-phys", 10, lambda link: link.kind == "bridge")

    vlan = ["--provider-network-type", "vlan", "--provider-physical-network", "physnet1"]
    refused = cli(netns, token, "network", "create", *vlan, "--provider-segment", "101", "v101")
    assert refused.returncode == 1
    assert "BadRequest" in refused.stderr and "CONFIG_VLAN_8021Q" in refused.stderr

    listed = cli_json(netns, token, "network", "list", "--long")
    by_name = {row["Name"]: row for row in listed}
    assert set(by_name) == {"lan1", "ext"}
    assert by_name["ext"]["Network Type"] == "flat"
    assert sorted(by_name["lan1"]["Tags"]) == ["blue", "red"]

    shown = cli_json(netns, token, "network", "show", "lan1")  # by name: 404 on the id, then ?name=
    assert shown["id"] == lan["id"] and shown["revision_number"] == 2  # the tags bumped it

    done = cli(netns, token, "network", "set", "--name", "lan2", "--tag", "green", "lan1")
    assert done.returncode == 0, done.stderr

    extensions = cli_json(netns, token, "extension", "list", "--network")
    aliases = {row["Alias"] for row in extensions}
    assert {"standard-attr-tag", "provider", "pagination", "revision-if-match"} <= aliases

    missing = cli(netns, token, "network", "show", "nosuch")  # the CLI's find: id, then name
    assert missing.returncode == 1 and "No Network found for nosuch" in missing.stderr

    renamed = cli_json(netns, token, "network", "show", lan["id"])
    assert (renamed["name"], sorted(renamed["tags"])) == ("lan2", ["blue", "green", "red"])
    done = cli(netns, token, "network", "delete", "lan2")
    assert done.returncode == 0, done.stderr
    wait_for(lambda: brq(lan["id"]) not in links(netns), 10, "the deleted network's bridge gone")


def connect(tmp_path: Path, token: str) -> openstack.connection.Connection:
    """openstacksdk with a clouds.yaml as the README shows it (auth_type admin_token)."""
    clouds = tmp_path / f"clouds-{token[-6:]}.yaml"
    clouds.write_text(
        "clouds:\n  kvmnetd:\n    auth_type: admin_token\n"
        f"    auth:\n      token: {token}\n      endpoint: {ENDPOINT}\n"
    )
    config = openstack.config.OpenStackConfig(config_files=[str(clouds)])
    return openstack.connection.Connection(config=config.get_one(cloud="kvmnetd"))


def _member(daemon: E2EDaemon) -> str:
    """A second project and a member token of it (set up through the native API)."""
    with daemon.client() as http:
        project = http.post("/v1/projects", json={"name": "acme"})
        assert project.status_code == 201, project.text
        token = http.post(f"/v1/projects/{project.json()['id']}/tokens", json={"role": "member"})
        assert token.status_code == 201, token.text
        return str(token.json()["secret"])


def _sdk_session(tmp_path: Path, admin: str, member: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    conn = connect(tmp_path, admin)
    made = [conn.network.create_network(name=f"n{i}") for i in range(5)]
    seen["found"] = conn.network.find_network("n3").id == made[3].id
    seen["paged"] = [n.name for n in conn.network.networks(limit=2)]
    seen["all"] = [n.name for n in conn.network.networks()]
    net = conn.network.get_network(made[0].id)
    before = net.revision_number
    renamed = conn.network.update_network(net, name="first", if_revision=before)
    seen["renamed"] = (renamed.name, renamed.revision_number)
    try:
        conn.network.update_network(made[0].id, name="again", if_revision=before)
    except sdk_errors.HttpException as exc:
        seen["stale"] = (type(exc).__name__, exc.status_code)
    try:
        conn.network.get_network(str(uuid.uuid4()))
    except sdk_errors.NotFoundException as exc:
        seen["unknown"] = exc.status_code
    as_member = connect(tmp_path, member)
    own = as_member.network.create_network(name="mine")
    seen["member_sees"] = sorted(n.name for n in as_member.network.networks())
    seen["member_provider"] = own.provider_network_type
    seen["member_finds_admins"] = as_member.network.find_network(made[1].id)
    seen["admin_sees_members"] = conn.network.find_network(own.id) is not None
    seen["bridge"] = brq(own.id)
    return seen


def test_openstacksdk_pages_finds_and_guards_revisions_and_a_member_sees_its_own(
    netns: str, daemon: E2EDaemon, tmp_path: Path
) -> None:
    member = _member(daemon)
    seen = in_netns(netns, lambda: _sdk_session(tmp_path, admin_token(daemon), member))
    assert seen["found"]
    # pages of 2 followed through networks_links: every network once, in creation order
    assert seen["paged"] == seen["all"] and seen["all"][-5:] == [f"n{i}" for i in range(5)]
    assert seen["renamed"] == ("first", 2)
    assert seen["stale"] == ("PreconditionFailedException", 412)
    assert seen["unknown"] == 404
    assert seen["member_sees"] == ["mine"]
    assert seen["member_provider"] is None  # provider:* is the admins' (Neutron's policy)
    assert seen["member_finds_admins"] is None
    assert seen["admin_sees_members"]
    kernel_link(netns, seen["bridge"], 10, lambda link: link.kind == "bridge")
