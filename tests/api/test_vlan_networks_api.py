"""Managed networks on a VLAN (issue 10, item 3) on the real kernel of a fresh namespace.

As in tests/api/test_vlans_api.py, the only thing injected is the probe's answer that the
kernel has 802.1Q and VLAN filtering, so VLANs can be stored. A bridge_per_vlan VLAN
without an uplink owns a plain bridge, which this kernel has: a network on it is proven up
to dnsmasq answering a real DHCPDISCOVER there (the path probe's throwaway port).
"""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from app.db.repositories import desired_port_vlans, load_link_specs, load_vlan_work
from app.db.session import Database
from app.domain.links import LinkKind
from app.domain.vlans import vlan_bridge_name
from app.settings import Settings
from tests.api.test_addresses_api import eventually
from tests.api.test_nic_vlans_api import (  # noqa: F401 (fixtures)
    filtering_as_if_active,
    settings,
    vapi,
    vlan,
)
from tests.api.test_path_probe import probe, steps
from tests.api.test_vlans_api import make_bridge, problem
from tests.netns_tools import links


def network(api: TestClient, **body: Any) -> Any:
    return api.post("/v1/networks?wait=10", json={"name": "nat0", "subnet": "10.93.0.0/24", **body})


def test_a_network_names_exactly_one_of_bridge_tap_or_vlan(
    vapi: TestClient,  # noqa: F811
    settings: Settings,  # noqa: F811
) -> None:
    make_bridge(vapi, "br0")
    vlan(vapi, "tenant-a", 10, "br0", backend="bridge_per_vlan")
    for body in ({"bridge": "br0", "vlan": "tenant-a"}, {}):
        assert "exactly one of `bridge`, `tap` or `vlan`" in str(
            problem(network(vapi, **body), 422)
        )
    assert "no VLAN 'nope'" in str(problem(network(vapi, vlan="nope"), 404))
    assert vapi.get("/v1/networks").json()["items"] == []


def test_a_network_on_a_bridge_per_vlan_vlan_answers_dhcp_on_its_bridge(
    vapi: TestClient,  # noqa: F811
    netns: str,
) -> None:
    make_bridge(vapi, "br0")
    vlan_id = vlan(vapi, "tenant-a", 10, "br0", backend="bridge_per_vlan")
    r = network(vapi, vlan="tenant-a")
    assert r.status_code == 201, r.text
    shown = r.json()
    l3 = vlan_bridge_name("br0", 10)
    assert (shown["vlan_id"], shown["bridge_id"], shown["link"]) == (vlan_id, None, l3)
    assert "10.93.0.1/24" in links(netns)[l3].addresses
    path = probe(vapi)[0]["path:nat0"]
    found = steps(path)
    assert found["dhcp"]["ok"], path["detail"]
    assert found["dhcp"]["offer"].startswith("10.93.0.")
    # in use: the VLAN carries the network
    body = problem(vapi.delete("/v1/vlans/tenant-a"), 409, "in-use")
    assert [d["name"] for d in body["dependents"]] == ["nat0"], body
    assert vapi.delete("/v1/vlans/tenant-a?force=true&wait=10").status_code in (200, 202, 204)
    gone = vapi.get("/v1/networks/nat0")
    assert gone.status_code == 404 or gone.json()["status"] == "deleting", gone.text


def test_a_network_on_a_filtering_vlan_plans_bridge_dot_vid_and_the_self_port(
    vapi: TestClient,  # noqa: F811
    settings: Settings,  # noqa: F811
) -> None:
    trunk = str(make_bridge(vapi, "br0")["id"])
    filtering_as_if_active(settings, vlan(vapi, "tenant-a", 10, "br0", backend="vlan_filtering"))
    r = vapi.post(
        "/v1/networks", json={"name": "nat0", "vlan": "tenant-a", "subnet": "10.93.0.0/24"}
    )
    assert r.status_code == 202, r.text
    assert r.json()["link"] == "br0.10"
    db = Database(settings.db_url)
    try:
        with db.reading() as session:
            specs = [s for s in load_link_specs(session).specs if s.name == "br0.10"]
            desired = desired_port_vlans(session, trunk)
            # a notification about br0.10 finds its VLAN (the link pass's NAMES scope)
            by_name = [w.name for w in load_vlan_work(session, names=["br0.10", "eth9"])]
            assert by_name == ["tenant-a"]
            assert load_vlan_work(session, names=["br0.11", "br0v10"]) == []
    finally:
        db.dispose()
    assert [(s.kind, s.parent, s.addresses) for s in specs] == [
        (LinkKind.VLAN, "br0", ("10.93.0.1/24",))
    ]
    assert 10 in desired["br0"], desired


def test_a_failed_l3_interface_is_the_vlans_and_the_networks_error(
    vapi: TestClient,  # noqa: F811
    settings: Settings,  # noqa: F811
) -> None:
    """This kernel has no 802.1Q: creating `br0.10` fails, and that failure is the VLAN's
    (a VLAN that filters, as on a kernel with filtering: filtering_as_if_active) and so the
    network's."""
    make_bridge(vapi, "br0")
    filtering_as_if_active(settings, vlan(vapi, "tenant-a", 10, "br0", backend="vlan_filtering"))
    assert network(vapi, vlan="tenant-a").status_code in (201, 202)

    def failed() -> dict[str, Any] | None:
        shown = vapi.get("/v1/vlans/tenant-a").json()
        reason = shown["status_reason"] or ""
        return shown if shown["status"] == "error" and "br0.10" in reason else None

    shown = eventually(failed, timeout=10)
    assert shown is not None, vapi.get("/v1/vlans/tenant-a").json()
    net = vapi.get("/v1/networks/nat0").json()
    assert net["status"] != "active", net
    assert "waiting for vlan tenant-a" in net["status_reason"], net
    assert "br0.10" in net["status_reason"], net
