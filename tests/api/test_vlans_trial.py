"""What trying /v1/vlans as a new user found (issue 10), each a test that failed before its fix.

- A PATCH sending a field creation fixed (`vlan_id`, `trunk`, `backend`) was refused with
  pydantic's bare "Extra inputs are not permitted", which does not say that the field exists,
  why it cannot change, or what to do instead; it now says so, naming the field.
- `PATCH /v1/vlans/{id}?wait=abc` (or `wait=-1`, `wait=601`) answered 200: the VLAN's PATCH
  alone ignored the `?wait=` every other PATCH validates, so a client's bad value went
  unnoticed here and failed elsewhere.
- A rename (or a new description) was no event at all: a PATCH moves no status, so no worker
  published one, and a client following /v1/events ("every state change") kept the old name.
- `DELETE /v1/bridges/br0?force=true` on the trunk of a VLAN with a network on it got stuck:
  the 409 did not list the network, force left it, the VLAN's row could not go, and that one
  refused write failed the VLANs' whole write-back (and the pass) every few seconds.
- A tap or network on a VLAN in `error` was accepted: the tap on the trunk untagged, dnsmasq
  for a missing `br0.10`. Now a 409 with the VLAN's reason; a port never falls back to the
  trunk; dnsmasq waits for its interface.
- `PATCH {"vlan": null, "bridge": null}` left the tap on the trunk.
- `"vlan": ""` was a 404, `"vlan": 10` an unexplained 422, bad trunk-NIC VIDs "carries no
  VLAN"; `?wait=nan` said "<= 600"; a description took control characters.

The accepted path needs a stored VLAN, which this machine's kernel cannot carry: the app gets
the inspector of tests/api/test_vlans_api.py whose probe says the kernel has both features
(the only thing injected; no kernel object is needed for these answers).
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from fastapi.testclient import TestClient

from app.settings import Settings
from tests.api.test_vlans_api import GOOD, make_bridge, make_vlan, problem, stored, vlan_api
from tests.netns_tools import links, processes_in

__all__ = ["vlan_api"]  # the fixture, imported for pytest

VOLATILE = ("status", "status_reason", "observed_generation", "updated_at", "kernel_objects")


def _stable(vlan: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in vlan.items() if k not in VOLATILE}


FIXED = [
    ("vlan_id", 11),
    ("vlan_id", None),
    ("trunk", "br1"),
    ("trunk", None),
    ("backend", "bridge_per_vlan"),
    ("backend", None),
]


def test_patching_a_field_fixed_at_creation_says_why_and_changes_nothing(
    vlan_api: TestClient,
) -> None:
    """Every case against one app (each app start probes the host again)."""
    api = vlan_api
    make_bridge(api, "br0")
    make_bridge(api, "br1")
    vlan = make_vlan(api)
    url = f"/v1/vlans/{vlan['id']}"
    before = _stable(api.get(url).json())
    for field, value in FIXED:
        # alone, and next to a change that would be accepted: nothing of it is applied
        for body in ({field: value}, {field: value, "description": "changed"}):
            found = problem(api.patch(url, json=body), 422, "invalid-input")
            assert [e["loc"] for e in found["errors"]] == [["body", field]], found
            assert f"{field} cannot change" in found["detail"], found
            assert "create another VLAN" in found["detail"], found
    assert _stable(api.get(url).json()) == before
    # an unknown field is still refused as unknown
    found = problem(api.patch(url, json={"segmentation_id": 11}), 422, "invalid-input")
    assert "Extra inputs" in found["detail"]


def test_patch_checks_wait_like_every_patch(vlan_api: TestClient) -> None:
    api = vlan_api
    make_bridge(api, "br0")
    vlan = make_vlan(api, **GOOD)
    url = f"/v1/vlans/{vlan['id']}"
    for bad in ("abc", "-1", "601", "nan", ""):
        found = problem(api.patch(f"{url}?wait={bad}", json={"description": "x"}), 422)
        assert [e["loc"] for e in found["errors"]] == [["query", "wait"]], (bad, found)
    assert api.get(url).json()["description"] is None
    # a good value is accepted and never waits: a rename has nothing to settle
    r = api.patch(f"{url}?wait=600", json={"description": "tenant A"})
    assert r.status_code == 200, r.text
    assert r.json()["description"] == "tenant A"
    assert r.json()["generation"] == vlan["generation"]


def test_a_rename_is_an_event(vlan_api: TestClient) -> None:
    """/v1/events carries "every state change"; a PATCH moves no status, so no worker
    announced it: a client following VLANs by their events kept the old name. (The worker's
    own events about this VLAN may come meanwhile: this kernel cannot carry it.)"""
    api = vlan_api
    make_bridge(api, "br0")
    vlan = make_vlan(api)
    url = f"/v1/vlans/{vlan['id']}"
    bus = api.app.state.context.bus  # type: ignore[attr-defined]
    last = bus.last_id
    assert api.patch(url, json={"name": "tenant-b", "description": "B"}).status_code == 200
    updated = [e for e in bus.since(last) if e.type == "vlan.updated"]
    assert [(e.type, e.name, e.data) for e in updated] == [
        ("vlan.updated", "tenant-b", {"changed": ["name", "description"]})
    ]
    # what changes nothing announces nothing
    last = bus.last_id
    for body in ({}, {"name": "tenant-b"}, {"description": "B"}):
        assert api.patch(url, json=body).status_code == 200
    assert [e for e in bus.since(last) if e.type == "vlan.updated"] == []


def test_a_forced_trunk_delete_takes_the_network_on_its_vlan_with_it(
    vlan_api: TestClient, settings: Settings
) -> None:
    """The 409 listed the VLAN but not the network on it, and force deleted the VLAN but
    left the network: the VLAN's row then could not go (CHECK ck_networks_one_link), the
    whole link pass failed every few seconds, and VLAN, bridge and network stayed
    deleting/pending until the network was deleted by hand."""
    api = vlan_api
    make_bridge(api, "br0")
    make_vlan(api, backend="bridge_per_vlan")  # a plain bridge of its own: this kernel has it
    r = api.post(
        "/v1/networks?wait=10",
        json={"name": "nat0", "vlan": "tenant-a", "subnet": "10.94.0.0/24"},
    )
    assert r.status_code == 201, r.text
    found = problem(api.delete("/v1/bridges/br0"), 409, "in-use")
    assert [(d["kind"], d["name"]) for d in found["dependents"]] == [
        ("vlan", "tenant-a"),
        ("network", "nat0"),
    ]
    assert "network nat0" in found["detail"]
    r = api.delete("/v1/bridges/br0?force=true&wait=10")
    assert r.status_code == 204, r.text
    detached = api.get(r.headers["Operation-Location"]).json()["detached"]
    assert {(d["kind"], d["name"], d["action"]) for d in detached} == {
        ("network", "nat0", "deleted"),
        ("vlan", "tenant-a", "deleted"),
    }
    assert api.get("/v1/vlans").json()["items"] == []
    assert api.get("/v1/networks").json()["items"] == []
    assert api.get("/v1/bridges").json()["items"] == []
    for table in ("vlans", "networks", "bridges"):
        assert stored(settings, f"SELECT count(*) FROM {table}") == [(0,)], table


def test_a_vlan_row_the_database_keeps_fails_on_itself_not_the_pass(
    vlan_api: TestClient, settings: Settings
) -> None:
    """One VLAN's row the database refuses to delete (here a trigger, the stand-in for a
    constraint nobody foresaw) failed the VLANs' whole write-back, so every other VLAN's
    outcome was lost with it, pass after pass. Now that VLAN alone says why and backs off;
    the other VLAN's delete completes."""
    api = vlan_api
    make_bridge(api, "br0")
    make_bridge(api, "br1")
    kept = make_vlan(api, backend="bridge_per_vlan")
    other = make_vlan(api, name="b", trunk="br1", backend="bridge_per_vlan")
    for vlan in (kept, other):
        until(lambda v=vlan: api.get(f"/v1/vlans/{v['id']}").json()["status"], "active")
    with sqlite3.connect(settings.state_dir / "kvmnetd.db") as conn:
        conn.execute(
            "CREATE TRIGGER kvt_keep BEFORE DELETE ON vlans WHEN old.name = 'tenant-a' "
            "BEGIN SELECT RAISE(ABORT, 'kept by the test'); END"
        )
    try:
        assert api.delete("/v1/vlans/tenant-a").status_code == 202
        r = api.delete("/v1/vlans/b?wait=10")
        assert r.status_code == 204, r.text
        assert stored(settings, "SELECT name FROM vlans") == [("tenant-a",)]
        view = until(lambda: api.get("/v1/vlans/tenant-a").json(), "kept by the test")
        assert view["status"] == "deleting", view
        assert view["status_reason"].startswith("retrying with backoff: "), view
    finally:
        with sqlite3.connect(settings.state_dir / "kvmnetd.db") as conn:
            conn.execute("DROP TRIGGER kvt_keep")
    # a retry (backoff) finishes it once the database lets it
    until(lambda: api.get("/v1/vlans/tenant-a").status_code, "404", timeout=30)


def until(probe: Any, text: str, timeout: float = 10) -> Any:
    """Poll `probe()` until its answer mentions `text` (the supervisor runs on its own)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = probe()
        if text in str(answer) or time.monotonic() > deadline:
            assert text in str(answer), answer
            return answer
        time.sleep(0.1)


def test_nothing_joins_a_vlan_in_error_and_no_port_lands_untagged_on_its_trunk(
    vlan_api: TestClient, settings: Settings, netns: str
) -> None:
    """A tap or network on a VLAN in `error` was accepted silently: the tap active on the
    trunk untagged (on no VLAN at all: no isolation), the network pending with dnsmasq
    started for a `br0.10` that never came. Now joining it is a 409 with the VLAN's reason
    (as joining a bridge that was never created is), nothing stored; and a port whose VLAN
    fails after it joined (the VLAN was still pending then) leaves the trunk instead of
    staying on it untagged."""
    api = vlan_api
    make_bridge(api, "br0")
    r = api.post("/v1/vlans?wait=10", json={**GOOD, "name": "legacy"})  # auto: filtering
    assert r.status_code == 201 and r.json()["status"] == "error", r.text
    legacy = r.json()
    for url, body in (
        ("/v1/taps", {"name": "tap1", "vlan": "legacy"}),
        ("/v1/networks", {"name": "nat0", "vlan": "legacy", "subnet": "10.95.0.0/24"}),
    ):
        found = problem(api.post(url, json=body), 409, "conflict")
        assert "VLAN 'legacy' is in error" in found["detail"], found
        assert "CONFIG_BRIDGE_VLAN_FILTERING" in found["detail"], found
    for table in ("taps", "networks"):
        assert stored(settings, f"SELECT count(*) FROM {table}") == [(0,)], table
    assert "tap1" not in links(netns)
    # a tap on br0 whose row then names the failed VLAN (a stand-in for one that joined
    # while the VLAN was pending): the next reconcile takes it off the trunk
    tap = api.post("/v1/taps?wait=10", json={"name": "tap2", "bridge": "br0"}).json()
    assert links(netns)["tap2"].master == "br0"
    with sqlite3.connect(settings.state_dir / "kvmnetd.db") as conn:
        conn.execute("UPDATE taps SET vlan_id = ? WHERE id = ?", (legacy["id"], tap["id"]))
    r = api.patch("/v1/taps/tap2?wait=10", json={"mtu": 1400})
    assert r.status_code == 200, r.text
    assert links(netns)["tap2"].master is None
    # and it says why, on itself (its link is made all the same)
    assert r.json()["status"] == "error", r.text
    assert "its VLAN is in error" in r.json()["status_reason"], r.text
    assert api.get(r.headers["Operation-Location"]).json()["status"] == "failed"


def test_vlan_null_with_bridge_null_detaches_a_tap(vlan_api: TestClient, netns: str) -> None:
    """`PATCH {"vlan": null, "bridge": null}` left the tap on the trunk with its bridge_id
    (the null `bridge` was read as "not given"); `{"bridge": null}` alone detached it."""
    api = vlan_api
    make_bridge(api, "br0")
    make_vlan(api, backend="bridge_per_vlan")
    r = api.post("/v1/taps?wait=10", json={"name": "tap1", "vlan": "tenant-a"})
    assert r.status_code == 201, r.text
    assert links(netns)["tap1"].master == "br0v10"
    r = api.patch("/v1/taps/tap1?wait=10", json={"vlan": None, "bridge": None})
    assert r.status_code == 200, r.text
    assert (r.json()["bridge_id"], r.json()["vlan_id"]) == (None, None)
    assert links(netns)["tap1"].master is None


def _vm(nic: dict[str, Any]) -> dict[str, Any]:
    return {"name": "web", "boot": {"kernel": "/nonexistent"}, "nics": [nic]}


def test_references_and_trunk_vids_are_checked_at_the_edge(vlan_api: TestClient) -> None:
    """`"vlan": ""` was a 404 "no VLAN ''" (every reference field: a 422 now, they share one
    type); `"vlan": 10` did not say a VID is no reference; a trunk NIC's VIDs were checked
    only against the bridge, so `[0]`, `[4095]`, `[10, 10]` and `[]` on a bridge without
    VLANs said "carries no VLAN" instead of what is wrong with them."""
    api = vlan_api
    make_bridge(api, "br0")
    nat = {"name": "nat0", "subnet": "10.96.0.0/24"}
    empty = [
        ("/v1/taps", {"name": "tap1", "vlan": ""}, ["body", "vlan"]),
        ("/v1/taps", {"name": "tap1", "bridge": ""}, ["body", "bridge"]),
        ("/v1/networks", {**nat, "vlan": ""}, ["body", "vlan"]),
        ("/v1/networks", {**nat, "bridge": ""}, ["body", "bridge"]),
        ("/v1/vms", _vm({"backend": "bridge", "vlan": ""}), ["body", "nics", 0, "vlan"]),
        ("/v1/vms", _vm({"backend": "bridge", "bridge": ""}), ["body", "nics", 0, "bridge"]),
    ]
    for url, body, loc in empty:
        found = problem(api.post(url, json=body), 422, "invalid-input")
        assert [e["loc"] for e in found["errors"]] == [loc], (body, found)
        assert "at least 1 character" in found["detail"], found
    found = problem(api.patch("/v1/taps/x", json={"vlan": ""}), 422, "invalid-input")
    assert "at least 1 character" in found["detail"], found
    for url, body in (
        ("/v1/taps", {"name": "tap1", "vlan": 10}),
        ("/v1/networks", {**nat, "vlan": 10}),
        ("/v1/vms", _vm({"backend": "bridge", "vlan": 10})),
    ):
        found = problem(api.post(url, json=body), 422, "invalid-input")
        assert "name or id (UUID), not the VID" in found["detail"], found
    for nic, words in (
        ({"vlan_tagged": [0]}, "null VID"),
        ({"vlan_tagged": [4095]}, "reserved"),
        ({"vlan_tagged": [4096]}, "1-4094"),
        ({"vlan_tagged": [10, 10]}, "VLAN 10 more than once"),
        ({"vlan_tagged": []}, "at least one VLAN id"),
        ({"vlan_tagged": [10], "native_vlan": 4095}, "reserved"),
        ({"vlan_tagged": [10], "native_vlan": 0}, "null VID"),
    ):
        body = _vm({"backend": "bridge", "bridge": "br0", **nic})
        found = problem(api.post("/v1/vms", json=body), 422, "invalid-input")
        assert words in found["detail"] and "carries no VLAN" not in found["detail"], found
    assert api.get("/v1/vms").json()["items"] == []
    # the schema says so too (SDKs and schemathesis see it)
    nic = api.get("/openapi.json").json()["components"]["schemas"]["NicIn"]["properties"]
    tagged = next(s for s in nic["vlan_tagged"]["anyOf"] if s.get("type") == "array")
    assert (tagged["minItems"], tagged["uniqueItems"]) == (1, True)
    assert (tagged["items"]["minimum"], tagged["items"]["maximum"]) == (1, 4094)


def test_wait_must_be_finite_and_a_description_one_line(vlan_api: TestClient) -> None:
    """`?wait=nan` said "should be <= 600" (nan is neither <= nor >): it says a finite
    number now; a VLAN description took NUL and other control characters."""
    api = vlan_api
    make_bridge(api, "br0")
    for bad in ("a\x00b", "two\nlines", "tab\there", "\x7f", "\x85"):
        found = problem(api.post("/v1/vlans", json={**GOOD, "description": bad}), 422)
        assert [e["loc"] for e in found["errors"]] == [["body", "description"]], found
        assert "control character" in found["detail"], found
    vlan = make_vlan(api, description="tenant A, über")
    url = f"/v1/vlans/{vlan['id']}"
    found = problem(api.patch(url, json={"description": "x\x00"}), 422)
    assert "control character" in found["detail"], found
    assert api.get(url).json()["description"] == "tenant A, über"
    for wait in ("nan", "inf", "-inf"):
        found = problem(api.patch(f"{url}?wait={wait}", json={"description": "x"}), 422)
        assert "finite number" in found["detail"], (wait, found)
        assert "600" not in found["detail"], found


def test_no_dnsmasq_for_an_interface_that_does_not_exist(
    vlan_api: TestClient, settings: Settings, netns: str
) -> None:
    """A network on a VLAN that failed (its `br0.10` never came) stayed pending with
    dnsmasq started for the missing interface. The API refuses such a network now (test
    above); one whose link is missing all the same (here its row is pointed at the failed
    VLAN behind the API's back) waits, pending with the reason, and dnsmasq runs only once
    its interface exists."""
    api = vlan_api
    make_bridge(api, "br0")
    r = api.post("/v1/vlans?wait=10", json={**GOOD, "name": "legacy"})  # auto: filtering
    assert r.status_code == 201 and r.json()["status"] == "error", r.text
    legacy = r.json()["id"]
    r = api.post(
        "/v1/networks?wait=10", json={"name": "nat0", "bridge": "br0", "subnet": "10.98.0.0/24"}
    )
    assert r.status_code == 201 and r.json()["status"] == "active", r.text
    assert r.json()["dnsmasq_pid"] in processes_in(netns)
    with sqlite3.connect(settings.state_dir / "kvmnetd.db") as conn:
        conn.execute(
            "UPDATE networks SET bridge_id = NULL, vlan_id = ? WHERE name = 'nat0'", (legacy,)
        )
    r = api.patch("/v1/networks/nat0?wait=5", json={"domain": "tenant.internal"})
    view = until(lambda: api.get("/v1/networks/nat0").json(), "waiting for vlan legacy")
    assert view["status"] == "pending", view
    assert view["dnsmasq_pid"] is None, view
    assert not [p for p in processes_in(netns) if b"dnsmasq" in _comm(p)]


def _comm(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read()
    except OSError:
        return b""
