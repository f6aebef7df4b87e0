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
from tests.netns_tools import ip

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


def test_network_names_are_unique_without_regard_to_case(api: TestClient) -> None:
    """VM and VLAN names are; a network's name names no kernel, dnsmasq or nft object (those
    use its id), so `nc` and `NC` were two networks a user could not tell apart by ear. The
    refusal names the holder; any case finds it, spelt as stored."""
    make_bridge(api, "br0")
    make_bridge(api, "br1")
    r = api.post("/v1/networks", json={"name": "nc", "bridge": "br0", "subnet": "10.94.0.0/24"})
    assert r.status_code == 202, r.text
    network_id = r.json()["id"]
    r = api.post("/v1/networks", json={"name": "NC", "bridge": "br1", "subnet": "10.95.0.0/24"})
    body = problem(r, 409, "name-taken")
    assert "'nc'" in body["detail"] and network_id in body["detail"], body
    assert [n["name"] for n in api.get("/v1/networks").json()["items"]] == ["nc"]
    r = api.get("/v1/networks/NC")
    assert r.status_code == 200, r.text
    assert (r.json()["id"], r.json()["name"]) == (network_id, "nc")


def test_a_vm_is_found_by_its_name_in_any_case(api: TestClient) -> None:
    """VM names are unique without regard to case (a POST of "WEB" next to "web" is 409
    name-taken, RFC 4343), yet GET /v1/vms/WEB and a forward to `"vm": "WEB"` were 404s:
    the name a user cannot take is a name they find."""
    make_bridge(api, "br0")
    r = api.post("/v1/networks", json={"name": "nat0", "bridge": "br0", "subnet": "10.94.0.0/24"})
    assert r.status_code == 202, r.text
    r = api.post(
        "/v1/vms",
        json=_vm({"backend": "bridge", "bridge": "br0"}, "web") | {"power_state": "stopped"},
    )
    assert r.status_code == 202, r.text
    vm_id = r.json()["id"]
    problem(api.post("/v1/vms", json={"name": "WEB", "boot": {"kernel": KERNEL}}), 409)
    r = api.get("/v1/vms/WEB")
    assert r.status_code == 200, r.text
    assert (r.json()["id"], r.json()["name"]) == (vm_id, "web")
    r = api.post("/v1/port-forwards", json={"network": "NAT0", "vm": "WEB", "port": 8080})
    assert r.status_code == 202, r.text
    assert r.json()["vm_id"] == vm_id


def _forwarding_lab(api: TestClient) -> None:
    make_bridge(api, "br0")
    r = api.post("/v1/networks", json={"name": "nat0", "bridge": "br0", "subnet": "10.94.0.0/24"})
    assert r.status_code == 202, r.text
    nic = {"backend": "bridge", "bridge": "br0"}
    r = api.post("/v1/vms", json=_vm(nic, "web") | {"power_state": "stopped"})
    assert r.status_code == 202, r.text


def test_a_port_taken_again_is_a_port_clash_naming_the_holder(api: TestClient) -> None:
    """Posting a forward again said "a port forward named 'tcp-any-8080' exists" (409
    name-taken: its derived name), and a batch with the same port twice said so of
    port_forwards[1] though only item 0 of that very request had it."""
    _forwarding_lab(api)
    forward = {"network": "nat0", "vm": "web", "port": 8080}
    r = api.post("/v1/port-forwards", json=forward)
    assert r.status_code == 202, r.text
    first = r.json()
    body = problem(api.post("/v1/port-forwards", json=forward), 409, "conflict")
    assert "clashes with port forward 'tcp-any-8080'" in body["detail"], body
    assert first["id"] in body["detail"], body

    batch = [
        {"network": "nat0", "vm": "web", "port": 9090},
        {"network": "nat0", "vm": "web", "port": 9090, "target_port": 90},
    ]
    r = api.post("/v1/port-forwards/batch", json={"port_forwards": batch})
    body = problem(r, 409, "conflict")
    assert body["detail"].startswith("port_forwards[1]: "), body
    assert "clashes with item 0 of this batch ('tcp-any-9090')" in body["detail"], body
    assert body["index"] == 1, body

    batch = [
        {"name": "www", "network": "nat0", "vm": "web", "port": 9091},
        {"name": "www", "network": "nat0", "vm": "web", "port": 9092},
    ]
    r = api.post("/v1/port-forwards/batch", json={"port_forwards": batch})
    body = problem(r, 409, "name-taken")
    assert body["detail"] == "port_forwards[1]: item 0 of this batch is named 'www'", body
    assert [f["name"] for f in api.get("/v1/port-forwards").json()["items"]] == ["tcp-any-8080"]


def test_a_vm_nic_tap_name_is_refused_as_that_vm_s(api: TestClient, netns: str) -> None:
    """`POST /v1/taps {"name": "kv5aae33e5-0"}` (a running VM's NIC tap, ifalias
    kvmnetd:vm:<id>) said it was "taken by a tun link kvmnetd does not manage". The running
    VM's tap is made here as its worker makes it: a tap with the VM's mark."""
    make_bridge(api, "br0")
    nic = {"backend": "bridge", "bridge": "br0"}
    r = api.post("/v1/vms", json=_vm(nic, "web") | {"power_state": "stopped"})
    assert r.status_code == 202, r.text
    vm = r.json()
    tap = vm["nics"][0]["tap_name"]
    ip(netns, "tuntap", "add", "dev", tap, "mode", "tap")
    ip(netns, "link", "set", "dev", tap, "alias", f"kvmnetd:vm:{vm['id']}")
    body = problem(api.post("/v1/taps", json={"name": tap}), 409, "name-taken")
    assert "does not manage" not in body["detail"], body
    assert f"VM 'web''s NIC 0 ({vm['id']})" in body["detail"], body
    assert api.get("/v1/taps").json()["items"] == []


def test_an_interface_that_is_another_bridge_s_uplink_names_that_bridge(
    api: TestClient, netns: str
) -> None:
    """ "eth1 is already the uplink of bridge <uuid>": the user knows the bridge by name."""
    br0 = make_bridge(api, "br0")
    make_bridge(api, "br1")
    ip(netns, "link", "add", "eth1", "type", "veth", "peer", "name", "eth1p")
    ip(netns, "link", "set", "eth1", "up")
    r = api.put("/v1/bridges/br0/uplink?wait=20", json={"interface": "eth1"})
    assert r.status_code == 201, r.text
    r = api.put("/v1/bridges/br1/uplink?dry_run=true", json={"interface": "eth1"})
    body = problem(r, 409)
    assert f"eth1 is already the uplink of bridge 'br0' ({br0['id']})" in body["detail"], body
