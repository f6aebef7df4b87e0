"""Neutron subnets and quotas in process (issue 12): a subnet is a managed network on a
bridge or VLAN; its errors as Neutron's (SubnetNotFound, NetworkNotFound, InvalidInput,
SubnetInUse, OverQuota, 412), the collection engine on subnets, tags, a member's view, and
/v2.0/quotas over our project quotas. The real clients' runs: tests/e2e/test_neutron_subnets.py.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.api.test_neutron_api import error, neutron
from tests.db_template import seed_state_dir
from tests.netns_tools import throwaway_netns
from tests.tenancy import auth, make_project, make_token

N = "/networking/v2.0/networks"
S = "/networking/v2.0/subnets"
Q = "/networking/v2.0/quotas"
UNKNOWN = "00000000-0000-4000-8000-00000000dead"
# name -> (cidr, tags): one local network of the same name carries each
SUBNETS = {
    "s-alpha": ("10.71.1.0/24", ["a"]),
    "s-bravo": ("10.71.2.0/24", ["a", "b"]),
    "s-charlie": ("10.71.3.0/24", ["b"]),
}


def network(client: TestClient, name: str, headers: dict[str, str] | None = None) -> str:
    made = neutron(client.post(N, json={"network": {"name": name}}, headers=headers), 201)
    return str(made["network"]["id"])


def subnet_body(network_id: str, cidr: str, **more: Any) -> dict[str, Any]:
    return {"subnet": {"network_id": network_id, "cidr": cidr, "ip_version": 4, **more}}


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    """One app (unix-socket admin) on a fresh namespace with the three SUBNETS, tagged."""
    base = Path(tempfile.mkdtemp(prefix="kvt-nsub-"))
    settings = Settings(
        state_dir=seed_state_dir(base / "state"),
        run_dir=base / "run",
        listen="",
        probe_kernel=base / "no-kernel",
    )
    with throwaway_netns() as netns:
        app = create_app(settings, token="test-token", host_netns=netns)
        with TestClient(app, base_url="http://kvmnetd") as client:
            for name, (cidr, tags) in SUBNETS.items():
                body = subnet_body(network(client, name[2:]), cidr, name=name, tags=tags)
                neutron(client.post(S, json=body), 201)
            yield client


def names(client: TestClient, query: str = "") -> list[str]:
    return [s["name"] for s in neutron(client.get(f"{S}{query}"), 200)["subnets"]]


def by_name(client: TestClient, name: str) -> dict[str, Any]:
    found: dict[str, Any] = neutron(client.get(f"{S}?name={name}"), 200)["subnets"][0]
    return found


# ---- create, show, the network's `subnets` --------------------------------------------------


def test_a_subnet_is_a_managed_network_on_the_network_and_answers_without_waiting(
    client: TestClient,
) -> None:
    net_id = network(client, "echo")
    body = subnet_body(
        net_id,
        "10.72.0.0/24",
        name="s-echo",
        dns_nameservers=["10.72.0.1"],
        host_routes=[{"destination": "10.99.0.0/16", "nexthop": "10.72.0.254"}],
    )
    started = time.monotonic()
    made = neutron(client.post(S, json=body), 201)["subnet"]
    elapsed = time.monotonic() - started
    assert made["network_id"] == net_id and made["cidr"] == "10.72.0.0/24"
    assert made["gateway_ip"] == "10.72.0.1" and made["ip_version"] == 4
    assert made["allocation_pools"] == [{"start": "10.72.0.2", "end": "10.72.0.254"}]
    assert made["dns_nameservers"] == ["10.72.0.1"] and made["enable_dhcp"] is True
    assert made["host_routes"] == [{"destination": "10.99.0.0/16", "nexthop": "10.72.0.254"}]
    assert made["project_id"] == made["tenant_id"] and made["revision_number"] == 1
    # the native view of the same row: a network on the bridge, pending (nothing waited)
    native = neutron(client.get(f"/v1/networks/{made['id']}"), 200)
    assert native["name"] == "s-echo" and native["nat"]["enabled"] is False
    assert elapsed < 2.0, f"the create waited {elapsed:.1f} s"  # networks wait up to 5 s
    shown = neutron(client.get(f"{N}/{net_id}"), 200)["network"]
    assert shown["subnets"] == [made["id"]]
    assert neutron(client.get(f"{S}/{made['id']}?fields=cidr"), 200) == {
        "subnet": {"cidr": "10.72.0.0/24"}
    }
    neutron(client.delete(f"{S}/{made['id']}"), 204)
    assert neutron(client.get(f"{N}/{net_id}"), 200)["network"]["subnets"] == []
    neutron(client.delete(f"{N}/{net_id}"), 204)


# ---- errors ----------------------------------------------------------------------------------


def test_create_errors_are_neutrons(client: TestClient) -> None:
    net_id = network(client, "foxtrot")
    missing = subnet_body(UNKNOWN, "10.73.0.0/24")
    assert error(client.post(S, json=missing), 404, "NetworkNotFound") == (
        f"Network {UNKNOWN} could not be found."
    )
    error(client.post(S, json=subnet_body("nosuch", "10.73.0.0/24")), 404, "NetworkNotFound")
    v6 = subnet_body(net_id, "fd00::/64", ip_version=6)
    assert "IPv6" in error(client.post(S, json=v6), 400, "InvalidInput")
    no_gateway = subnet_body(net_id, "10.73.0.0/24", gateway_ip=None)
    assert "gateway" in error(client.post(S, json=no_gateway), 400)
    pools = [
        {"start": "10.73.0.10", "end": "10.73.0.20"},
        {"start": "10.73.0.30", "end": "10.73.0.40"},
    ]
    two = subnet_body(net_id, "10.73.0.0/24", allocation_pools=pools)
    assert "one" in error(client.post(S, json=two), 400)
    bogus = subnet_body(net_id, "10.73.0.0/24", bogus=1)
    assert "bogus" in error(client.post(S, json=bogus), 400)
    no_network = {"subnet": {"cidr": "10.73.0.0/24", "ip_version": 4}}
    assert "network_id" in error(client.post(S, json=no_network), 400, "InvalidInput")
    no_version = {"subnet": {"network_id": net_id, "cidr": "10.73.0.0/24"}}
    assert "ip_version" in error(client.post(S, json=no_version), 400)
    assert "tags" not in error(client.post(S, json={"subnet": 5}), 400)  # never 422
    neutron(client.post(S, json=subnet_body(net_id, "10.73.0.0/24", name="s-fox")), 201)
    second = subnet_body(net_id, "10.74.0.0/24", name="s-fox2")
    assert "one IPv4 subnet per network" in error(client.post(S, json=second), 409, "Conflict")
    unnamed = subnet_body(net_id, "10.74.0.0/24")  # said so, not a clash of a made-up name
    assert "one IPv4 subnet per network" in error(client.post(S, json=unnamed), 409)
    other = network(client, "golf")
    taken = subnet_body(other, "10.74.0.0/24", name="s-fox")
    assert "s-fox" in error(client.post(S, json=taken), 409)
    overlap = subnet_body(other, "10.73.0.0/25", name="s-golf")
    error(client.post(S, json=overlap), 409)


def test_unknown_subnets_updates_and_revisions(client: TestClient) -> None:
    assert error(client.get(f"{S}/{UNKNOWN}"), 404, "SubnetNotFound") == (
        f"Subnet {UNKNOWN} could not be found."
    )
    error(client.get(f"{S}/nosuch"), 404, "SubnetNotFound")
    error(client.put(f"{S}/{UNKNOWN}", json={"subnet": {"name": "x"}}), 404, "SubnetNotFound")
    error(client.delete(f"{S}/{UNKNOWN}"), 404, "SubnetNotFound")
    alpha = by_name(client, "s-alpha")
    path = f"{S}/{alpha['id']}"
    assert "cidr" in error(client.put(path, json={"subnet": {"cidr": "10.9.0.0/24"}}), 400)
    changes = {"dns_nameservers": ["10.71.1.53"], "enable_dhcp": False}
    changed = neutron(client.put(path, json={"subnet": changes}), 200)["subnet"]
    assert changed["dns_nameservers"] == ["10.71.1.53"] and changed["enable_dhcp"] is False
    revision = changed["revision_number"]
    assert revision == alpha["revision_number"] + 1
    stale = {"If-Match": f"revision_number={revision - 1}"}
    answer = client.put(path, json={"subnet": {"enable_dhcp": True}}, headers=stale)
    assert "Constrained" in error(answer, 412, "RevisionNumberConstraintFailed")
    error(client.delete(path, headers=stale), 412)
    current = {"If-Match": f"revision_number={revision}"}
    restored = client.put(path, json={"subnet": {"enable_dhcp": True}}, headers=current)
    assert neutron(restored, 200)["subnet"]["enable_dhcp"] is True


def test_a_subnet_with_fixed_addresses_is_in_use(client: TestClient) -> None:
    net_id = network(client, "hotel")
    pools = [{"start": "10.75.0.100", "end": "10.75.0.200"}]  # fixed ones lie outside
    body = subnet_body(net_id, "10.75.0.0/24", name="s-hotel", allocation_pools=pools)
    made = neutron(client.post(S, json=body), 201)
    port = neutron(client.post("/v1/ports", json={"name": "held", "bridge": net_id}), 202)
    assert port["ipv4"] is not None
    message = error(client.delete(f"{S}/{made['subnet']['id']}"), 409, "SubnetInUse")
    assert "IP allocation from this subnet: port held." in message, message
    neutron(client.delete(f"/v1/ports/{port['id']}"), 202)
    neutron(client.delete(f"{S}/{made['subnet']['id']}"), 204)
    error(client.get(f"{S}/{made['subnet']['id']}"), 404, "SubnetNotFound")


# ---- the engine, tags, a member ------------------------------------------------------------


def test_the_engine_filters_pages_and_sorts_subnets(client: TestClient) -> None:
    ours = "&name=s-alpha&name=s-bravo&name=s-charlie"
    assert names(client, "?cidr=10.71.2.0/24") == ["s-bravo"]
    assert names(client, f"?ip_version=4{ours}") == ["s-alpha", "s-bravo", "s-charlie"]
    assert names(client, "?tags=a") == ["s-alpha", "s-bravo"]
    assert names(client, "?tags=a,b") == ["s-bravo"]
    assert names(client, "?tags-any=b") == ["s-bravo", "s-charlie"]
    assert names(client, f"?not-tags-any=a{ours}") == ["s-charlie"]
    assert names(client, f"?sort_key=cidr&sort_dir=desc{ours}") == [
        "s-charlie",
        "s-bravo",
        "s-alpha",
    ]
    assert "colour" in error(client.get(f"{S}?colour=red"), 400)
    page = neutron(client.get(f"{S}?limit=1{ours}"), 200)
    assert [s["name"] for s in page["subnets"]] == ["s-alpha"]
    assert "next" in {link["rel"] for link in page["subnets_links"]}
    fields = neutron(client.get(f"{S}?fields=name&fields=cidr&name=s-bravo"), 200)
    assert fields == {"subnets": [{"name": "s-bravo", "cidr": "10.71.2.0/24"}]}


def test_subnet_tags_bump_the_revision(client: TestClient) -> None:
    charlie = by_name(client, "s-charlie")
    path = f"{S}/{charlie['id']}/tags"
    assert neutron(client.get(path), 200) == {"tags": ["b"]}
    neutron(client.put(f"{path}/c"), 201)
    after = by_name(client, "s-charlie")
    assert after["tags"] == ["b", "c"]
    assert after["revision_number"] == charlie["revision_number"] + 1
    neutron(client.delete(f"{path}/c"), 204)
    error(client.get(f"{path}/c"), 404, "TagNotFound")


def test_a_member_sees_and_changes_only_its_projects_subnets(client: TestClient) -> None:
    db = client.app.state.context.db  # type: ignore[attr-defined]
    token = auth(make_token(db, make_project(db, "subnetters"), "member"))
    net_id = network(client, "india", headers=token)
    made = client.post(S, json=subnet_body(net_id, "10.76.0.0/24", name="s-india"), headers=token)
    own = neutron(made, 201)["subnet"]
    listed = neutron(client.get(S, headers=token), 200)["subnets"]
    assert [s["id"] for s in listed] == [own["id"]]
    alpha = by_name(client, "s-alpha")
    error(client.get(f"{S}/{alpha['id']}", headers=token), 404, "SubnetNotFound")
    error(client.delete(f"{S}/{alpha['id']}", headers=token), 404, "SubnetNotFound")
    foreign = subnet_body(alpha["network_id"], "10.77.0.0/24")
    error(client.post(S, json=foreign, headers=token), 404, "NetworkNotFound")
    # an admin adding a subnet to a member's network: the subnet is the member's
    assert own["project_id"] != alpha["project_id"]


# ---- quotas ------------------------------------------------------------------------------


def test_quotas_map_network_subnet_and_port_onto_ours(client: TestClient) -> None:
    db = client.app.state.context.db  # type: ignore[attr-defined]
    project = make_project(db, "quoted")
    member = auth(make_token(db, project, "member"))
    unlimited = {"network": -1, "subnet": -1, "port": -1}
    ids = {"project_id": project, "tenant_id": project}
    assert neutron(client.get(f"{Q}/{project}"), 200) == {"quota": {**unlimited, **ids}}
    assert neutron(client.get(f"{Q}/{project}/default"), 200) == {"quota": {**unlimited, **ids}}
    assert neutron(client.get(f"{Q}/quoted"), 200)["quota"]["project_id"] == project  # by name
    set_ = client.put(f"{Q}/{project}", json={"quota": {"network": 1, "subnet": "1"}})
    assert neutron(set_, 200)["quota"] == {"network": 1, "subnet": 1, "port": -1, **ids}
    native = neutron(client.get(f"/v1/projects/{project}"), 200)["quotas"]
    assert (native["segments"], native["networks"], native["ports"]) == (1, 1, None)
    listed = neutron(client.get(Q), 200)["quotas"]
    assert [q["project_id"] for q in listed] == [project]

    net_id = network(client, "juliet", headers=member)
    over = client.post(N, json={"network": {"name": "kilo"}}, headers=member)
    assert error(over, 409, "OverQuota").startswith("Quota exceeded for resources: ['network'].")
    neutron(client.post(S, json=subnet_body(net_id, "10.78.0.0/24"), headers=member), 201)
    details = neutron(client.get(f"{Q}/{project}/details", headers=member), 200)["quota"]
    assert details["network"] == {"used": 1, "limit": 1, "reserved": 0}
    assert details["subnet"] == {"used": 1, "limit": 1, "reserved": 0}
    assert details["port"] == {"used": 0, "limit": -1, "reserved": 0}

    for check in (True, "true", "True", 1):  # neutron-lib convert_to_boolean (re-trial N9)
        shrink = {"quota": {"network": 0, "check_limit": check}}
        error(client.put(f"{Q}/{project}", json=shrink), 400, "InvalidQuotaValue")
    maybe = {"quota": {"network": 0, "check_limit": "maybe"}}
    assert "check_limit" in error(client.put(f"{Q}/{project}", json=maybe), 400)
    assert "router" in error(client.put(f"{Q}/{project}", json={"quota": {"router": 5}}), 400)
    error(client.put(f"{Q}/{project}", json={"quota": {"network": -2}}), 400)
    error(client.put(f"{Q}/{project}", json={"quota": {"network": "many"}}), 400)
    error(client.put(f"{Q}/{UNKNOWN}", json={"quota": {"network": 1}}), 404, "ProjectNotFound")

    # a member: its own project's quotas only, and only to read
    assert neutron(client.get(f"{Q}/{project}", headers=member), 200)["quota"]["network"] == 1
    error(client.get(f"{Q}/default", headers=member), 404, "ProjectNotFound")
    error(client.get(Q, headers=member), 403, "PolicyNotAuthorized")
    unset = client.put(f"{Q}/{project}", json={"quota": {"network": -1}}, headers=member)
    error(unset, 403, "PolicyNotAuthorized")
    error(client.delete(f"{Q}/{project}", headers=member), 403)

    neutron(client.delete(f"{Q}/{project}"), 204)
    assert neutron(client.get(f"{Q}/{project}"), 200) == {"quota": {**unlimited, **ids}}
    assert neutron(client.get(Q), 200) == {"quotas": []}
    neutron(client.post(N, json={"network": {"name": "kilo"}}, headers=member), 201)


def test_a_deleted_subnets_name_and_cidr_are_free_once_the_delete_answers(
    client: TestClient,
) -> None:
    """A Terraform/Heat replace: delete, then create the same at once (re-trial N1: the
    name and CIDR stayed taken until the next full pass while the row was `deleting`)."""
    body = subnet_body(network(client, "replace"), "10.71.9.0/24", name="s-replace")
    made = neutron(client.post(S, json=body), 201)["subnet"]
    neutron(client.delete(f"{S}/{made['id']}"), 204)
    again = neutron(client.post(S, json=body), 201)["subnet"]
    # the network's delete takes the subnet: both free again at its 204
    neutron(client.delete(f"{N}/{again['network_id']}"), 204)
    body = subnet_body(network(client, "replace"), "10.71.9.0/24", name="s-replace")
    third = neutron(client.post(S, json=body), 201)["subnet"]
    neutron(client.delete(f"{N}/{third['network_id']}"), 204)
