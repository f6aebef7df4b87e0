"""Neutron `vlan` networks in process (issue 12): as in tests/api/test_vlans_api.py, the only
thing injected is the capability probe's answer that the kernel has 802.1Q and VLAN
filtering (this one has neither), so VLAN rows can be stored; the kernel side is proven in
the nested tier (tests/kernel/nested/test_neutron_vlans.py).

A member's network without provider attributes (tenant_network_type vlan) is a VLAN of its
project on the physnet's bridge, which is the default project's: it takes the lowest free
VID of the project's vlan_ranges, and its view omits the provider attributes."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.settings import Settings
from tests.api.test_vlans_api import vlan_api

__all__ = ["vlan_api"]  # the fixture, used by name

N = "/networking/v2.0/networks"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"physical_networks": {"physnet1": "br-phys"}, "tenant_network_type": "vlan"}
    )


def created(r: Any) -> dict[str, Any]:
    assert r.status_code == 201, r.text
    return r.json()["network"]  # type: ignore[no-any-return]


def test_a_members_tenant_vlan_network_rides_on_the_physnets_bridge(vlan_api: TestClient) -> None:
    provider = {
        "name": "phys101",
        "provider:network_type": "vlan",
        "provider:physical_network": "physnet1",
        "provider:segmentation_id": 101,
    }
    prov = created(vlan_api.post(N, json={"network": provider}))
    assert prov["provider:segmentation_id"] == 101
    project = vlan_api.post("/v1/projects", json={"name": "acme", "vlan_ranges": [[200, 210]]})
    assert project.status_code == 201, project.text
    token = vlan_api.post(f"/v1/projects/{project.json()['id']}/tokens", json={"role": "member"})
    member = {"Authorization": f"Bearer {token.json()['secret']}"}
    mine = [created(vlan_api.post(N, json={"network": {"name": n}}, headers=member)) for n in "ab"]
    assert all("provider:network_type" not in net for net in mine), mine
    shown = [vlan_api.get(f"{N}/{net['id']}").json()["network"] for net in mine]
    assert [(n["provider:network_type"], n["provider:segmentation_id"]) for n in shown] == [
        ("vlan", 200),
        ("vlan", 201),
    ]
    assert {n["provider:physical_network"] for n in shown} == {"physnet1"}
    assert {n["project_id"] for n in shown} == {project.json()["id"]}
    # the trunk stays the default project's: the member does not see it natively
    assert vlan_api.get("/v1/bridges/br-phys", headers=member).status_code == 404
    forbidden = vlan_api.post(N, json={"network": {**provider, "name": "x"}}, headers=member)
    assert forbidden.status_code == 403, forbidden.text
