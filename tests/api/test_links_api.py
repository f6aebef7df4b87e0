"""The REST API against the real kernel of a fresh namespace (in-process app)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.kernel import links


def test_create_bridge_and_tap_appear_in_kernel(api: TestClient, netns: str) -> None:
    r = api.post("/v1/bridges?wait=10", json={"name": "br0", "addresses": ["192.168.105.1/24"]})
    assert r.status_code == 201, r.text
    bridge = r.json()
    assert bridge["status"] == "active"
    assert r.headers["location"] == f"/v1/bridges/{bridge['id']}"
    r = api.post("/v1/taps?wait=10", json={"name": "tap1", "bridge": "br0"})
    assert r.status_code == 201, r.text
    kernel = links(netns)
    assert kernel["br0"].kind == "bridge"
    assert "192.168.105.1/24" in kernel["br0"].addresses
    assert kernel["br0"].info["IFLA_BR_STP_STATE"] == 0
    assert kernel["br0"].info["IFLA_BR_FORWARD_DELAY"] == 0
    assert kernel["tap1"].kind == "tun"
    assert kernel["tap1"].master == "br0"
    assert kernel["tap1"].up
    assert kernel["tap1"].alias == f"kvmnetd:tap:{r.json()['id']}"
