"""A member's ports on its tenant VLAN network (issue 12), in process: the VLAN rides on the
physnet's bridge, which is the default project's and which the member does not see (natively
a 404). A port or tap on the VLAN joins that trunk all the same: the trunk is reached
through the VLAN the member may use, not looked up in the member's scope (this was a 404
`no bridge '<trunk id>'`, found by tests/kernel/nested/test_neutron_vlans.py).

As in tests/api/test_nic_vlans_api.py, the probe's answer that the kernel has 802.1Q and
VLAN filtering is injected (`vapi`) and the VLAN's row says active once the supervisor has
tried it (this kernel filters no VLANs); the rest is the real app."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.settings import Settings
from tests.api.test_nic_vlans_api import filtering_as_if_active, vapi

__all__ = ["vapi"]  # the fixture, used by name

N = "/networking/v2.0"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "physical_networks": {"physnet1": "br-phys"},
            "tenant_network_type": "vlan",
            "reconcile_interval": 3600.0,  # the rows stand for a filtering kernel meanwhile
        }
    )


def member_network(vapi: TestClient) -> tuple[Any, dict[str, str], Any]:
    """A project with VLAN range 200-210, a member token's headers, and the member's Neutron
    network `mine` made with them (201): (the project's answer, the headers, the answer)."""
    project = vapi.post("/v1/projects", json={"name": "acme", "vlan_ranges": [[200, 210]]})
    assert project.status_code == 201, project.text
    token = vapi.post(f"/v1/projects/{project.json()['id']}/tokens", json={"role": "member"})
    member = {"Authorization": f"Bearer {token.json()['secret']}"}
    r = vapi.post(f"{N}/networks", json={"network": {"name": "mine"}}, headers=member)
    assert r.status_code == 201, r.text
    return project, member, r


def test_a_member_attaches_ports_and_taps_to_its_tenant_vlan(
    vapi: TestClient, settings: Settings
) -> None:
    # the physnet's bridge, made by the admin first (a member's first VLAN makes it too: below)
    assert vapi.post("/v1/bridges?wait=20", json={"name": "br-phys"}).status_code == 201
    project, member, r = member_network(vapi)
    mine = r.json()["network"]
    filtering_as_if_active(settings, mine["id"])
    trunk = vapi.get("/v1/bridges/br-phys").json()
    assert trunk["project_id"] != project.json()["id"]  # the default project's
    assert vapi.get("/v1/bridges/br-phys", headers=member).status_code == 404
    # a Neutron port, a native port and a tap resource on the VLAN: each an access port of it
    # on the trunk
    r = vapi.post(f"{N}/ports", json={"port": {"network_id": mine["id"]}}, headers=member)
    assert r.status_code == 201, r.text
    assert r.json()["port"]["network_id"] == mine["id"]
    r = vapi.post("/v1/ports", json={"name": "p2", "vlan": mine["id"]}, headers=member)
    assert r.status_code == 202, r.text
    assert (r.json()["vlan_id"], r.json()["bridge_id"]) == (mine["id"], trunk["id"])
    r = vapi.post("/v1/taps", json={"name": "t3", "vlan": mine["id"]}, headers=member)
    assert r.status_code == 202, r.text
    assert (r.json()["vlan_id"], r.json()["bridge_id"]) == (mine["id"], trunk["id"])


def test_a_members_first_tenant_network_makes_the_physnets_bridge(
    vapi: TestClient, settings: Settings
) -> None:
    """No physnet bridge yet: the member's first VLAN network makes it, in the default project
    (the operator's configuration, settings physical_networks), not the member's (this was
    a 404 `no project default`: a member cannot act in the default project)."""
    assert vapi.get("/v1/bridges/br-phys").status_code == 404
    project, member, r = member_network(vapi)
    assert r.json()["network"]["project_id"] == project.json()["id"]
    trunk = vapi.get("/v1/bridges/br-phys")
    assert trunk.status_code == 200, trunk.text
    assert trunk.json()["project_id"] == "00000000-0000-4000-8000-000000000000"  # default
    assert vapi.get("/v1/bridges/br-phys", headers=member).status_code == 404  # not the member's
