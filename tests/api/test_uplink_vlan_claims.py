"""An uplink set on a trunk that already carries bridge_per_vlan VLANs: each VLAN's 802.1Q
sub-interface `<uplink>.<vid>` is claimed for it (app.services.uplinks), a foreign link of
that name refuses the uplink, and the claims go with the uplink's row.

This kernel has no 802.1Q, so the VLANs are stored through the probe-faking inspector of
tests/api/test_vlans_api.py (`vlan_api`); the nested tier (tests/kernel/nested/
test_vlan_drift.py) proves the sub-interface itself comes and goes with the uplink.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from fastapi.testclient import TestClient

from app.settings import Settings
from tests.api.test_vlans_api import make_bridge, make_vlan, problem, vlan_api
from tests.netns_tools import ip

__all__ = ["vlan_api"]  # the fixture, used by name


def claims(settings: Settings) -> dict[str, str]:
    with sqlite3.connect(settings.state_dir / "kvmnetd.db") as conn:
        rows = conn.execute("SELECT name, resource_id FROM link_names WHERE resource = 'vlan'")
        return dict(rows.fetchall())


def uplinks(settings: Settings) -> list[Any]:
    with sqlite3.connect(settings.state_dir / "kvmnetd.db") as conn:
        return conn.execute("SELECT name FROM uplinks").fetchall()


def test_an_uplink_set_later_claims_its_vlan_subinterfaces_and_releases_them(
    vlan_api: TestClient, netns: str, settings: Settings
) -> None:
    api = vlan_api
    for n in (0, 1):
        make_bridge(api, f"br{n}")
        ip(netns, "link", "add", f"up{n}", "type", "veth", "peer", "name", f"far{n}")
    ten = make_vlan(api, name="ten", backend="bridge_per_vlan")
    make_vlan(api, name="twenty", trunk="br1", vlan_id=20, backend="bridge_per_vlan")
    assert "up0.10" not in claims(settings)

    r = api.put("/v1/bridges/br0/uplink", json={"interface": "up0", "probe_address": "10.9.9.9"})
    assert r.status_code == 202, r.text
    assert claims(settings)["up0.10"] == ten["id"]
    problem(api.post("/v1/bridges", json={"name": "up0.10"}), 409, "name-taken")

    # a foreign link holding the name refuses the uplink; nothing is stored
    ip(netns, "link", "add", "up1.20", "type", "veth", "peer", "name", "far1b")
    body = problem(api.put("/v1/bridges/br1/uplink", json={"interface": "up1"}), 409, "name-taken")
    assert "'up1.20'" in body["detail"] and "does not manage" in body["detail"], body
    assert uplinks(settings) == [("up0",)] and "up1.20" not in claims(settings)

    # the uplink's row goes: so do its claims (the VLAN keeps its own bridge's)
    r = api.delete("/v1/bridges/br0/uplink?wait=20")
    assert r.status_code == 204, r.text
    assert "up0.10" not in claims(settings) and claims(settings)["br0v10"] == ten["id"]
    assert api.post("/v1/bridges", json={"name": "up0.10"}).status_code == 202
