"""Ports on VLANs: a port created with `vlan` is an access port of the VLAN exactly like a
tap resource on it (tests/api/test_nic_vlans_api.py: the probe's answer that the kernel
has 802.1Q and VLAN filtering is injected, the rest is the real app): on a filtering VLAN
its tap stays on the trunk with the VLAN as its PVID, on a per-VLAN-bridge VLAN it joins
the VLAN's own bridge; a VLAN carrying a port is in use, also for a forced delete."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from app.db.repositories import load_link_specs, tap_port_vlans
from app.db.session import Database
from app.domain.vlan_ports import Membership
from app.settings import Settings
from tests.api.test_nic_vlans_api import created, settings, vapi, world
from tests.api.test_vlans_api import problem
from tests.netns_tools import links

__all__ = ["settings", "vapi", "world"]  # the fixtures, used by name


def test_ports_on_vlans_are_access_ports(
    vapi: TestClient, world: dict[str, str], settings: Settings, netns: str
) -> None:
    pa = created(vapi.post("/v1/ports?wait=10", json={"name": "pa", "vlan": "tenant-a"}))
    assert (pa["bridge_id"], pa["vlan_id"], pa["status"]) == (
        world["br0"],
        world["tenant-a"],
        "active",
    ), pa
    assert links(netns)[pa["tap"]].master == "br0"
    pc = created(vapi.post("/v1/ports", json={"name": "pc", "vlan": "tenant-c"}))
    assert pc["vlan_id"] == world["tenant-c"]
    problem(vapi.post("/v1/ports", json={"name": "px", "vlan": 10}), 422)  # a VID
    problem(vapi.post("/v1/ports", json={"name": "px", "vlan": "nope"}), 404)
    db = Database(settings.db_url)
    try:
        with db.reading() as session:
            masters = {s.name: s.master for s in load_link_specs(session).specs}
            planned = tap_port_vlans(session, world["br0"])
    finally:
        db.dispose()
    assert masters[pc["tap"]] == "br1v30"  # the VLAN's own bridge (bridge_per_vlan)
    assert planned == {pa["tap"]: {10: Membership(10, pvid=True, untagged=True)}}
    listed: list[dict[str, Any]] = vapi.get("/v1/ports").json()["items"]
    assert {p["name"] for p in listed} == {"pa", "pc"}
    for query in ("", "?force=true"):
        refused = problem(vapi.delete(f"/v1/vlans/tenant-a{query}"), 409)
        assert [d["kind"] for d in refused["dependents"]] == ["port"], refused
