"""What a fresh user's trial of the vhost-net and SR-IOV API found (issue 13), on this host
(no SR-IOV physical function; /dev/vhost-net as the probe found it): refusals name a NIC as
the request did (`nics[1]`, or nothing on POST .../nics, whose body is the NIC), never by an
id the user never saw; an sriov NIC on isapc is 422; fields of other backends are 422 naming
who takes them; no SR-IOV is 409 host-lacks-feature with `missing_features`; `vhost` null is
auto, and a NIC PATCH that sends a fixed field with the value it has is no change; a PF path
that is no link name is 422 and GET /v1/host/sriov/{pf} shows one PF; a member's 403 on POST
.../nics names the NIC's own field; the tenant summary has `sriov`. Every refusal stores
nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from app.settings import Settings
from tests.api.test_isolation_api import problem
from tests.api.test_links_api import make_bridge
from tests.api.test_tenant_restrictions import assert_forbidden, image, member_of, vm_body

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-")
BRIDGE_NIC = {"backend": "bridge", "bridge": "br0"}
SPEC = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"


def _vm(*nics: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "name": "t",
        "memory_mib": 32,
        "power_state": "stopped",
        "boot": {"disk": "/dev/null"},
        "nics": list(nics),
        **extra,
    }


def _vm_count(api: TestClient) -> int:
    return len(api.get("/v1/vms").json()["items"])


def _nics(api: TestClient, vm_id: str) -> list[dict[str, Any]]:
    nics: list[dict[str, Any]] = api.get(f"/v1/vms/{vm_id}").json()["nics"]
    return nics


def _stopped_vm(api: TestClient, *nics: dict[str, Any], **extra: Any) -> dict[str, Any]:
    r = api.post("/v1/vms?wait=10", json=_vm(*nics, **extra))
    assert r.status_code in (200, 201), r.text
    vm: dict[str, Any] = r.json()
    return vm


def _refused(r: Any, status: int, kind: str, starts: str) -> dict[str, Any]:
    body = problem(r, status, kind)
    assert body["detail"].startswith(starts), body["detail"]
    assert not UUID.search(body["detail"]), body["detail"]  # no NIC id the user never saw
    return body


def test_nic_refusals_name_the_nic_as_the_request_did(api: TestClient) -> None:
    make_bridge(api)
    vhost_net = api.get("/v1/host/capabilities").json()["vhost_net"]
    e1000_on = {**BRIDGE_NIC, "model": "e1000", "vhost": "on"}
    user_on = {"backend": "user", "vhost": "on"}
    r = api.post("/v1/vms", json=_vm(BRIDGE_NIC, e1000_on))
    _refused(r, 422, "invalid-input", "nics[1]: vhost-net only accelerates virtio-net-pci")
    r = api.post("/v1/vms", json=_vm(user_on, BRIDGE_NIC))
    _refused(r, 422, "invalid-input", "nics[0]: vhost-net moves a tap's packets")
    if vhost_net["available"]:
        print("vhost-net works here: the 409 of vhost=on is not checked on this host")
    else:
        r = api.post("/v1/vms", json=_vm(BRIDGE_NIC, {**BRIDGE_NIC, "vhost": "on"}))
        body = _refused(r, 409, "host-lacks-feature", "nics[1]: vhost=on needs vhost-net")
        assert [m["feature"] for m in body["missing_features"]] == ["vhost_net"]
    assert _vm_count(api) == 0

    vm = _stopped_vm(api, BRIDGE_NIC)
    add = f"/v1/vms/{vm['id']}/nics"
    r = api.post(add, json=e1000_on)  # the body is the NIC itself: no position to name
    _refused(r, 422, "invalid-input", "vhost-net only accelerates virtio-net-pci")
    _refused(api.post(add, json=user_on), 422, "invalid-input", "vhost-net moves a tap's")
    if not vhost_net["available"]:
        r = api.post(add, json={**BRIDGE_NIC, "vhost": "on"})
        _refused(r, 409, "host-lacks-feature", "vhost=on needs vhost-net")
    assert len(_nics(api, vm["id"])) == 1


def test_an_sriov_nic_on_isapc_is_422_before_any_vf_is_looked_for(api: TestClient) -> None:
    sriov = {"backend": "sriov"}
    r = api.post("/v1/vms", json=_vm(sriov, machine="isapc"))
    _refused(r, 422, "invalid-input", "nics[0]: the isapc machine has no PCI bus: the sriov")
    problem(api.post("/v1/vms", json=_vm(sriov)), 409, "host-lacks-feature")  # pc: the host's
    assert _vm_count(api) == 0
    vm = _stopped_vm(api, machine="isapc")
    r = api.post(f"/v1/vms/{vm['id']}/nics", json=sriov)
    _refused(r, 422, "invalid-input", "the isapc machine has no PCI bus")
    assert _nics(api, vm["id"]) == []


def test_fields_of_other_backends_are_422_naming_who_takes_them(api: TestClient) -> None:
    make_bridge(api)
    refused = [
        ({"backend": "sriov", "bridge": "br0"}, "`bridge` is for the bridge backend, not sriov"),
        ({"backend": "sriov", "tap": "tap0"}, "`tap` is for the tap backend"),
        ({"backend": "sriov", "user": {}}, "`user` is for the user backend"),
        ({"backend": "sriov", "socket": {"mode": "listen"}}, "`socket` is for the socket"),
        ({"backend": "sriov", "ipv4": "10.0.0.5"}, "`ipv4` is for the bridge, tap or port"),
        ({"backend": "sriov", "link_up": False}, "`link_up` false needs a QEMU netdev"),
        ({"backend": "user", "bridge": "br0"}, "`bridge` is for the bridge backend, not user"),
        ({"backend": "user", "ipv4": "10.0.2.15"}, "`ipv4` is for the bridge, tap or port"),
        ({**BRIDGE_NIC, "user": {"restrict": True}}, "`user` is for the user backend"),
        ({**BRIDGE_NIC, "tap": "tap0"}, "`tap` is for the tap backend, not bridge"),
        ({"backend": "hub", "hub": 1, "parent": "eth0"}, "`parent` is for the macvtap"),
    ]
    for nic, message in refused:
        body = problem(api.post("/v1/vms", json=_vm(nic)), 422, "invalid-input")
        assert message in body["detail"], (nic, body)
        assert body["errors"][0]["loc"] == ["body", "nics", 0], body
    assert _vm_count(api) == 0
    # left out, null or at the default every backend carries: accepted
    defaults = {"bridge": None, "tap": None, "user": None, "ipv4": None, "link_up": True}
    r = api.post("/v1/vms", json=_vm({"backend": "sriov", **defaults}))
    problem(r, 409, "host-lacks-feature")  # past the 422s: the host has no PF
    vm = _stopped_vm(api, {"backend": "user", "bridge": None, "link_up": True})
    add = f"/v1/vms/{vm['id']}/nics"
    for nic, message in refused:
        body = problem(api.post(add, json=nic), 422, "invalid-input")
        assert message in body["detail"] and body["errors"][0]["loc"] == ["body"], body
    (user_nic,) = _nics(api, vm["id"])
    patch = f"/v1/vms/{vm['id']}/nics/0"
    body = problem(api.patch(patch, json={"bridge": "br0"}), 422, "invalid-input")
    assert body["errors"][0]["loc"] == ["body", "bridge"], body
    assert _nics(api, vm["id"]) == [user_nic]


def test_no_sriov_here_is_host_lacks_feature_naming_sriov(api: TestClient) -> None:
    for nic, reason in (
        ({"backend": "sriov"}, "this host has no SR-IOV physical function"),
        ({"backend": "sriov", "pf": "eth0"}, "eth0 is not an SR-IOV physical function"),
    ):
        body = problem(api.post("/v1/vms", json=_vm(nic)), 409, "host-lacks-feature")
        assert reason in body["detail"], body
        (missing,) = body["missing_features"]
        assert missing["feature"] == "sriov" and missing["reason"].startswith(reason), missing
    vm = _stopped_vm(api)
    r = api.post(f"/v1/vms/{vm['id']}/nics", json={"backend": "sriov"})
    assert problem(r, 409, "host-lacks-feature")["missing_features"][0]["feature"] == "sriov"
    assert _vm_count(api) == 1 and _nics(api, vm["id"]) == []


def test_vhost_null_is_auto_and_a_nic_sent_back_unchanged_is_no_change(api: TestClient) -> None:
    make_bridge(api)
    vm = _stopped_vm(api, {**BRIDGE_NIC, "vhost": None})
    r = api.post(f"/v1/vms/{vm['id']}/nics?wait=10", json={**BRIDGE_NIC, "vhost": None})
    assert r.status_code in (201, 202), r.text
    nics = _nics(api, vm["id"])
    assert [n["vhost"] for n in nics] == ["auto", "auto"]
    generation = api.get(f"/v1/vms/{vm['id']}").json()["generation"]
    patch = f"/v1/vms/{vm['id']}/nics/0"
    read_back = nics[0]
    for same in ({"vhost": "auto"}, {"vhost": None}, {"queues": 1, "mtu": None}, read_back):
        r = api.patch(patch, json=same)
        assert r.status_code == 200, (same, r.text)
    assert api.get(f"/v1/vms/{vm['id']}").json()["generation"] == generation  # no change
    r = api.patch(patch, json={**read_back, "ingress_kbps": 10000})  # what does change
    assert r.status_code in (200, 202), r.text
    assert _nics(api, vm["id"])[0]["ingress_kbps"] == 10000
    nics = _nics(api, vm["id"])
    for other, field in (
        ({"vhost": "off"}, "vhost"),
        ({"queues": 2}, "queues"),
        ({**nics[0], "mac": "52:54:00:99:99:99"}, "mac"),
        ({**nics[0], "tap_name": "x"}, "tap_name"),  # shown, never set
        ({"bridge": "br1"}, "bridge"),  # not shown as such (bridge_id): never compared equal
    ):
        body = problem(api.patch(patch, json=other), 422, "invalid-input")
        (error,) = body["errors"]
        assert error["loc"] == ["body", field] and error["type"] == "fixed_at_creation", body
        assert f"{field} cannot change" in error["msg"] or "never set" in error["msg"], error
    assert _nics(api, vm["id"]) == nics


def test_a_pf_path_that_is_no_link_name_is_422_and_one_pf_reads_as_listed(
    api: TestClient,
) -> None:
    for pf in ("a" * 300, "a%00b", "a%20b", "%2E%2E", "a%2Fb"):
        for r in (
            api.put(f"/v1/host/sriov/{pf}", json={"num_vfs": 1}),
            api.get(f"/v1/host/sriov/{pf}"),
        ):
            if pf == "a%2Fb" and r.status_code == 404:  # no route: the path has a slash
                continue
            body = problem(r, 422, "invalid-input")
            assert body["errors"][0]["loc"] == ["path", "pf"], body
            assert "link name" in body["detail"] or "at least 1" in body["detail"], body
    r = api.get("/v1/host/sriov/eth0")
    assert "not an SR-IOV physical function" in problem(r, 404, "not-found")["detail"]
    # the view of one PF is the list's (the kernel tier has PFs: test_sriov_daemon.py)
    assert api.get("/v1/host/sriov").json() == []


def test_a_members_403_on_post_nics_names_the_nics_own_field(
    api: TestClient, settings: Settings
) -> None:
    _, member = member_of(api)
    r = api.post("/v1/vms?wait=10", json=vm_body(image(settings)), headers=member)
    assert r.status_code in (200, 201), r.text
    add = f"/v1/vms/{r.json()['id']}/nics"
    assert_forbidden(api.post(add, json={"backend": "sriov"}, headers=member), "backend")
    assert_forbidden(
        api.post(add, json={"backend": "macvtap", "parent": "eth0"}, headers=member), "backend"
    )
    assert_forbidden(api.post(add, json={"backend": "user"}, headers=member), "user.restrict")
    summary = api.get("/v1/capabilities", headers=member).json()["features"]
    sriov = api.get("/v1/host/capabilities").json()["sriov"]["available"]
    assert summary["sriov"] is sriov and isinstance(summary["vhost_net"], bool), summary


def test_the_openapi_document_describes_missing_features_and_the_vf_fields() -> None:
    schemas = json.loads(SPEC.read_text())["components"]["schemas"]
    problem_fields = schemas["Problem"]["properties"]
    assert "host-lacks-feature" in problem_fields["missing_features"]["description"]
    missing = schemas["MissingFeature"]["properties"]
    assert {"feature", "kernel_config", "module", "reason"} <= set(missing)
    assert "CONFIG_VHOST_NET" in schemas["Capabilities"]["properties"]["vhost_net"]["description"]
    vf = schemas["SriovVf"]["properties"]
    for name, cited in (("spoof_check", "spoofchk"), ("trust", "trust"), ("vlan", "vlan")):
        text = vf[name]["description"]
        assert "ip-link(8)" in text and cited in text and "Null" in text, (name, text)
    assert "Null: none" in vf["vlan"]["description"]
    assert "null: none" in schemas["NicOut"]["properties"]["vf_vlan"]["description"]
    assert "0: none" not in vf["vlan"]["description"]
