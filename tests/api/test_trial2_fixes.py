"""The second new-user trial's findings on refusals, fixed fields and names (issue 10, fixV).

Copied from the trial's tests (branch i10-trial2, tests/api/test_trial2.py) where they are
this part's, sharpened where the first version could pass for the wrong reason, plus the
misleading messages the trial reported without a test:

- On a kernel without 802.1Q and VLAN filtering, every place a VLAN is named answers as
  POST /v1/vlans does: 409 `host-lacks-feature` with `missing_features`, not "no VLAN 'x'"
  or "create the VLANs first" (advice that can only end in that 409).
- A PATCH of a field fixed at creation says so (and what to do instead), not pydantic's
  "Extra inputs are not permitted".
- VM and network names are unique without regard to case, and found so.
- A VM's NIC tap, a port clash and a batch's own duplicate are named for what they are.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.test_vlans_api import make_bridge, problem

FEATURES = ("CONFIG_VLAN_8021Q", "CONFIG_BRIDGE_VLAN_FILTERING")
KERNEL = "/boot/vmlinuz-never-booted"  # the VM is refused before anything looks at it


def _host_lacks_vlans(api: TestClient) -> None:
    caps = api.get("/v1/host/capabilities").json()["links"]
    if caps["vlan_8021q"]["available"] or caps["vlan_filtering"]["available"]:
        pytest.skip("this host's kernel has 802.1Q or VLAN filtering")


def _vm(nic: dict[str, Any], name: str = "router") -> dict[str, Any]:
    return {"name": name, "boot": {"kernel": KERNEL}, "nics": [nic]}


def _names_the_features(body: dict[str, Any], features: tuple[str, ...]) -> None:
    """The answer is POST /v1/vlans' 409: its type, each feature in the detail and in
    `missing_features` (with the module where there is one)."""
    assert body["type"] == "urn:kvmnetd:problem:host-lacks-feature", body
    for feature in features:
        assert feature in body["detail"], body
    missing = {m["kernel_config"]: m for m in body["missing_features"]}
    assert set(missing) == set(features), body
    if "CONFIG_VLAN_8021Q" in missing:
        assert missing["CONFIG_VLAN_8021Q"]["module"] == "8021q", body


def test_a_trunk_nic_on_a_host_without_vlans_names_the_missing_feature(
    api: TestClient,
) -> None:
    """A trunk NIC was told "create the VLANs first (POST /v1/vlans ...)", advice that can
    only end in the 409; it needs a filtering trunk, so the feature it names is bridge VLAN
    filtering (802.1Q sub-interfaces would give only bridge_per_vlan, which cannot carry a
    trunk NIC)."""
    _host_lacks_vlans(api)
    make_bridge(api, "br0")
    for nic in (
        {"backend": "bridge", "bridge": "br0", "vlan_tagged": [10, 20]},
        {"backend": "bridge", "bridge": "br0", "vlan_tagged": [10], "native_vlan": 30},
    ):
        body = problem(api.post("/v1/vms", json=_vm(nic)), 409)
        _names_the_features(body, ("CONFIG_BRIDGE_VLAN_FILTERING",))
        assert "create the VLANs first" not in body["detail"], body
    assert api.get("/v1/vms").json()["items"] == []
    assert [b["name"] for b in api.get("/v1/bridges").json()["items"]] == ["br0"]


def test_naming_a_vlan_on_a_host_without_vlans_says_why_there_is_none(
    api: TestClient,
) -> None:
    """Every place a VLAN can be named answers like POST /v1/vlans does: "no VLAN 'tenant-a'"
    alone sends the user looking for a typo, where the reason is the kernel."""
    _host_lacks_vlans(api)
    make_bridge(api, "br0")
    r = api.post("/v1/taps?wait=10", json={"name": "tap1", "bridge": "br0"})
    assert r.status_code == 201, r.text
    answers = [
        api.post("/v1/vlans", json={"name": "tenant-a", "vlan_id": 10, "trunk": "br0"}),
        api.post("/v1/taps", json={"name": "tap3", "vlan": "tenant-a"}),
        api.patch("/v1/taps/tap1", json={"vlan": "tenant-a"}),
        api.post("/v1/vms", json=_vm({"backend": "bridge", "vlan": "tenant-a"})),
        api.post(
            "/v1/networks",
            json={"name": "nat-a", "vlan": "tenant-a", "subnet": "10.93.0.0/24"},
        ),
    ]
    for r in answers:
        body = problem(r, 409)
        _names_the_features(body, FEATURES)
        if r.request.url.path != "/v1/vlans":
            assert "'tenant-a'" in body["detail"], body
    assert api.get("/v1/taps/tap1").json()["bridge_id"] is not None
    assert [t["name"] for t in api.get("/v1/taps").json()["items"]] == ["tap1"]
    for kind in ("vms", "networks", "vlans"):
        assert api.get(f"/v1/{kind}").json()["items"] == [], kind


def test_the_capabilities_name_the_kernel_option_of_a_missing_vlan_feature(
    api: TestClient,
) -> None:
    """The entry said only "Operation not supported (errno 95)"; it names the kernel option
    (and module) as the 409 does, whether the feature is there or not."""
    links = api.get("/v1/host/capabilities").json()["links"]
    for key, config, module in (
        ("vlan_8021q", "CONFIG_VLAN_8021Q", "8021q"),
        ("vlan_filtering", "CONFIG_BRIDGE_VLAN_FILTERING", None),
    ):
        entry = links[key]
        assert entry["kernel_config"] == config, entry
        assert entry["module"] == module, entry
        if not entry["available"]:
            assert config in entry["reason"], entry


def test_patching_a_field_fixed_at_creation_says_it_cannot_change(api: TestClient) -> None:
    """Only VLANs said "vlan_id cannot change"; every other resource answered pydantic's
    "Extra inputs are not permitted", as if the field did not exist. Each says it now, at
    the field, with what to do instead, and changes nothing."""
    make_bridge(api, "br0")
    assert api.post("/v1/taps", json={"name": "tap1"}).status_code == 202
    r = api.post("/v1/networks", json={"name": "nat0", "bridge": "br0", "subnet": "10.94.0.0/24"})
    assert r.status_code == 202, r.text
    r = api.post(
        "/v1/vms", json={"name": "web", "power_state": "stopped", "boot": {"kernel": KERNEL}}
    )
    assert r.status_code == 202, r.text
    for path, field, value, instead in (
        ("/v1/bridges/br0", "name", "br1", "delete the bridge"),
        ("/v1/taps/tap1", "name", "tap2", "delete the tap"),
        ("/v1/taps/tap1", "vnet_hdr", True, "delete the tap"),
        ("/v1/networks/nat0", "subnet", "10.95.0.0/24", "delete the network"),
        ("/v1/networks/nat0", "bridge", "br0", "delete the network"),
        ("/v1/networks/nat0", "name", "nat1", "delete the network"),
        ("/v1/vms/web", "name", "web2", "delete the VM"),
        ("/v1/vms/web", "nics", [], "delete the VM"),
    ):
        body = problem(api.patch(path, json={field: value}), 422, "invalid-input")
        assert "Extra inputs" not in body["detail"], (path, body)
        assert body["detail"].startswith(f"body.{field}: {field} cannot change"), (path, body)
        assert instead in body["detail"], (path, body)
        assert body["errors"][0]["type"] == "fixed_at_creation", body
    body = problem(api.patch("/v1/vms/web", json={"power_state": "running"}), 422)
    assert "/start" in body["detail"] and "Extra inputs" not in body["detail"], body
    # an unknown field is still one
    body = problem(api.patch("/v1/networks/nat0", json={"subnett": "x"}), 422)
    assert "Extra inputs" in body["detail"], body
    assert api.get("/v1/networks/nat0").json()["subnet"] == "10.94.0.0/24"
    assert [b["name"] for b in api.get("/v1/bridges").json()["items"]] == ["br0"]
    assert [t["name"] for t in api.get("/v1/taps").json()["items"]] == ["tap1"]
    assert api.get("/v1/vms/web").json()["power_state"] == "stopped"
