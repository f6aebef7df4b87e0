"""/v1/vlans on the real kernel of a fresh namespace (issue 10, user items 1 and 4).

This machine's kernel has neither 802.1Q sub-interfaces nor bridge VLAN filtering, so the
first tests prove the refusal: a clear problem naming the missing kernel features, nothing
stored and nothing in the kernel. Validation comes before that and is the same everywhere.

The accepted path (a stored row, its view, rename, delete, a trunk in use) is the service's
and the database's: `vlan_api` gives the app an inspector whose probe answer says the
kernel has both features (`VlanKernelInspector`, a subclass of the real one). That is the
only thing injected, and only for these service-level tests: no kernel object is made for a
VLAN in this change (the supervisor part comes next), and the kernel test tier proves the
backends on a kernel that has them.
"""

from __future__ import annotations

import copy
import re
import sqlite3
import types
import typing
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api.deps import AppContext
from app.domain.tenancy import DEFAULT_PROJECT_ID
from app.host.inspect import LiveHostInspector
from app.host.vlans import VlanOps
from app.schemas.vlans import VlanUpdate
from app.settings import Settings
from tests.netns_tools import links

PROBLEM = "application/problem+json"
LACKS = "urn:kvmnetd:problem:host-lacks-feature"


def problem(r: Any, status: int, kind: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body: dict[str, Any] = r.json()
    if kind is not None:
        assert body["type"] == f"urn:kvmnetd:problem:{kind}", body
    return body


def make_bridge(api: TestClient, name: str) -> dict[str, Any]:
    r = api.post("/v1/bridges?wait=10", json={"name": name})
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def stored(settings: Settings, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(settings.state_dir / "kvmnetd.db") as conn:
        return conn.execute(sql).fetchall()


def nothing_stored(api: TestClient, settings: Settings) -> None:
    assert api.get("/v1/vlans").json()["items"] == []
    assert stored(settings, "SELECT count(*) FROM vlans") == [(0,)]
    assert stored(settings, "SELECT count(*) FROM link_names WHERE resource = 'vlan'") == [(0,)]
    assert stored(settings, "SELECT count(*) FROM operations WHERE resource = 'vlan'") == [(0,)]


# ---- this kernel: refused, naming the features -----------------------------------------------


def _host_lacks_vlans(api: TestClient) -> None:
    caps = api.get("/v1/host/capabilities").json()["links"]
    if caps["vlan_8021q"]["available"] or caps["vlan_filtering"]["available"]:
        pytest.skip("this host's kernel has 802.1Q or VLAN filtering; the refusal needs neither")


def test_this_kernel_refuses_a_vlan_naming_the_missing_features(
    api: TestClient, netns: str, settings: Settings
) -> None:
    _host_lacks_vlans(api)
    make_bridge(api, "br0")
    before = links(netns)
    body = problem(
        api.post("/v1/vlans", json={"name": "tenant-a", "vlan_id": 10, "trunk": "br0"}),
        409,
        "host-lacks-feature",
    )
    for text in ("CONFIG_VLAN_8021Q", "module 8021q", "CONFIG_BRIDGE_VLAN_FILTERING"):
        assert text in body["detail"], body
    features = {m["feature"]: m for m in body["missing_features"]}
    assert set(features) == {"vlan_8021q", "vlan_filtering"}
    assert features["vlan_8021q"]["kernel_config"] == "CONFIG_VLAN_8021Q"
    assert features["vlan_8021q"]["module"] == "8021q"
    assert features["vlan_filtering"]["kernel_config"] == "CONFIG_BRIDGE_VLAN_FILTERING"
    assert all(m["reason"] for m in features.values())  # the probe's own words
    nothing_stored(api, settings)
    assert links(netns).keys() == before.keys()


@pytest.mark.parametrize(
    ("backend", "feature"),
    [("vlan_filtering", "vlan_filtering"), ("bridge_per_vlan", "vlan_8021q")],
)
def test_an_explicit_backend_this_kernel_lacks_is_refused_naming_that_feature(
    api: TestClient, netns: str, settings: Settings, backend: str, feature: str
) -> None:
    _host_lacks_vlans(api)
    make_bridge(api, "br0")
    before = links(netns)
    r = api.post(
        "/v1/vlans",
        json={"name": "tenant-a", "vlan_id": 10, "trunk": "br0", "backend": backend},
    )
    body = problem(r, 409, "host-lacks-feature")
    assert [m["feature"] for m in body["missing_features"]] == [feature]
    assert backend in body["detail"]
    nothing_stored(api, settings)
    assert links(netns).keys() == before.keys()


# ---- validation (before any host question) ---------------------------------------------------

GOOD = {"name": "tenant-a", "vlan_id": 10, "trunk": "br0"}
MISSING = object()


BAD_INPUT = [
    ("vlan_id", 0, "null VID"),
    ("vlan_id", 4095, "reserved"),
    ("vlan_id", 4096, "outside 1-4094"),
    ("vlan_id", -1, "outside 1-4094"),
    ("vlan_id", "10", "integer"),
    ("vlan_id", 10.5, "integer"),
    ("vlan_id", True, "integer"),
    # vlan_id left out or null: the next free id of the project's ranges
    # (tests/api/test_vlan_ranges.py)
    ("name", MISSING, "Field required"),
    ("name", None, "string"),
    ("name", "", "at least 1"),
    ("name", "10", "only digits"),
    ("name", "-a", "start with a letter or digit"),
    ("name", "a b", "only letters"),
    ("name", "tenant-a-is-long", "16 characters; at most 15"),
    ("trunk", MISSING, "Field required"),
    ("trunk", None, "string"),
    ("trunk", "", "at least 1"),
    ("backend", "ovs", "auto"),
    ("backend", None, "auto"),
    ("description", "x" * 256, "at most 255"),
    ("segmentation_id", 10, "Extra inputs"),
]


def test_bad_input_is_a_422_naming_the_field_and_stores_nothing(
    api: TestClient, settings: Settings
) -> None:
    """Every case against one app (each app start probes the host again)."""
    make_bridge(api, "br0")
    for field, value, why in BAD_INPUT:
        body = {k: v for k, v in GOOD.items() if k != field}
        if value is not MISSING:
            body[field] = value
        found = problem(api.post("/v1/vlans", json=body), 422)
        assert found["errors"][0]["loc"][:2] == ["body", field], (field, value, found)
        assert why in found["detail"], (field, value, found)
    nothing_stored(api, settings)


def test_the_trunk_must_be_one_of_our_bridges(api: TestClient, settings: Settings) -> None:
    make_bridge(api, "br0")
    assert api.post("/v1/taps?wait=10", json={"name": "tap1", "bridge": "br0"}).status_code == 201
    body = problem(api.post("/v1/vlans", json={**GOOD, "trunk": "nosuch"}), 404, "not-found")
    assert "nosuch" in body["detail"]
    body = problem(api.post("/v1/vlans", json={**GOOD, "trunk": "tap1"}), 409, "conflict")
    assert "tap1" in body["detail"] and "is a tap" in body["detail"]
    nothing_stored(api, settings)


# ---- the accepted path, with the two kernel features injected --------------------------------


class VlanKernelInspector(LiveHostInspector):
    """The real inspector, except that its probe's answer says the kernel has 802.1Q and
    bridge VLAN filtering (this one has neither). Built without qemu, so the probe is the
    link probe only."""

    def capabilities(self) -> dict[str, Any]:
        caps = copy.deepcopy(super().capabilities())
        for feature in ("vlan_8021q", "vlan_filtering"):
            caps["links"][feature] = {"available": True, "reason": None}
        return caps


@pytest.fixture
def vlan_api(api: TestClient, netns: str, settings: Settings) -> Iterator[TestClient]:
    ctx: AppContext = api.app.state.context  # type: ignore[attr-defined]
    real = ctx.inspector
    injected = VlanKernelInspector(
        netns=netns, qemu_binary="kvt-no-qemu", run_dir=settings.run_dir / "vlan-probe"
    )
    ctx.inspector = injected
    try:
        yield api
    finally:
        ctx.inspector = real
        injected.close()


def make_vlan(api: TestClient, **fields: Any) -> dict[str, Any]:
    r = api.post("/v1/vlans", json={**GOOD, **fields})
    assert r.status_code == 202, r.text
    return r.json()  # type: ignore[no-any-return]


def test_a_vlan_is_stored_and_shown_with_its_backend_and_kernel_names(
    vlan_api: TestClient, settings: Settings
) -> None:
    api = vlan_api
    br0 = make_bridge(api, "br0")
    r = api.post("/v1/vlans", json={**GOOD, "description": "tenant A"})
    assert r.status_code == 202, r.text
    vlan = r.json()
    assert r.headers["location"] == f"/v1/vlans/{vlan['id']}"
    operation = api.get(r.headers["operation-location"]).json()
    assert (operation["action"], operation["resource"]) == ("create", "vlan")
    assert vlan["status"] == "pending" and vlan["generation"] == 1
    assert vlan["observed_generation"] == 0
    assert vlan["backend"] == "vlan_filtering"  # auto prefers filtering
    assert vlan["requested_backend"] == "auto"
    assert (vlan["trunk_id"], vlan["trunk"], vlan["vlan_id"]) == (br0["id"], "br0", 10)
    assert vlan["description"] == "tenant A"
    assert vlan["l3_interface"] == "br0.10"
    assert vlan["kernel_objects"] == []  # no uplink: nothing tagged leaves the host
    # by id, by name in any case, and listed (the supervisor may have tried it meanwhile:
    # this kernel lacks what the injected probe claims, see the test after the next one)
    assert _stable(api.get(f"/v1/vlans/{vlan['id']}").json()) == _stable(vlan)
    assert _stable(api.get("/v1/vlans/TENANT-A").json()) == _stable(vlan)
    assert [_stable(v) for v in api.get("/v1/vlans").json()["items"]] == [_stable(vlan)]
    # the CHECK constraints of 0013 hold what validation holds
    with sqlite3.connect(settings.state_dir / "kvmnetd.db") as conn:
        for bad in ("vlan_id = 0", "vlan_id = 4095", "backend = 'auto'", "observed_objects = 1"):
            with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
                conn.execute(f"UPDATE vlans SET {bad}")


VOLATILE = ("status", "status_reason", "observed_generation", "updated_at", "kernel_objects")


def _stable(vlan: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in vlan.items() if k not in VOLATILE}


def test_a_vlan_the_kernel_cannot_carry_fails_on_itself_with_the_reason(
    vlan_api: TestClient, netns: str
) -> None:
    """The probe is made to lie (this kernel has no bridge VLAN filtering): the supervisor
    finds out, and the VLAN alone says so (error naming the kernel option, its operation
    failed), never a 500 or a stuck pending; the per-VLAN backend works here without an
    uplink (its bridge is an ordinary bridge) and becomes active with its bridge."""
    api = vlan_api
    make_bridge(api, "br0")
    make_bridge(api, "br1")
    r = api.post("/v1/vlans?wait=10", json=GOOD)
    assert r.status_code == 201, r.text
    failed = r.json()
    assert failed["status"] == "error", failed
    assert "CONFIG_BRIDGE_VLAN_FILTERING" in failed["status_reason"]
    assert api.get(r.headers["operation-location"]).json()["status"] == "failed"
    r = api.post(
        "/v1/vlans?wait=10",
        json={**GOOD, "name": "b", "trunk": "br1", "backend": "bridge_per_vlan"},
    )
    assert r.status_code == 201, r.text
    ok = r.json()
    assert (ok["status"], ok["observed_generation"]) == ("active", 1), ok
    assert "br1v10" in links(netns)
    # the per-VLAN bridge is ours, marked by the VLAN, and keeps a fixed MAC
    view = api.get(f"/v1/vlans/{ok['id']}").json()
    assert [o["name"] for o in view["kernel_objects"]] == ["br1v10"]
    # the /vlans view on a bridge of a kernel without filtering: a field says so
    r = api.get("/v1/bridges/br1/vlans")
    assert r.status_code == 200, r.text
    assert r.json()["filtering_available"] is False and r.json()["ports"] == []
    assert "CONFIG_BRIDGE_VLAN_FILTERING" in r.json()["reason"]
    # delete: the bridge goes, then the row and its name claim
    r = api.delete("/v1/vlans/b?wait=10")
    assert r.status_code == 204, r.text
    assert "br1v10" not in links(netns)
    assert api.post("/v1/bridges", json={"name": "br1v10"}).status_code == 202
    # every transition was an event about that VLAN, in order
    seen: list[str] = []
    current = ""
    with api.stream("GET", "/v1/events", headers={"Last-Event-ID": "0"}) as r:
        for line in r.iter_lines():
            if line.startswith("event: "):
                current = line[7:]
            elif line.startswith("data: ") and ok["id"] in line:
                seen.append(current)
                if current == "vlan.deleted":
                    break
    assert seen == ["vlan.pending", "vlan.active", "vlan.deleting", "vlan.deleted"]


def test_a_bridge_per_vlan_claims_its_bridge_name_and_a_long_trunk_gets_short_names(
    vlan_api: TestClient,
) -> None:
    api = vlan_api
    make_bridge(api, "br0")
    vlan = make_vlan(api, backend="bridge_per_vlan")
    assert (vlan["backend"], vlan["requested_backend"]) == ("bridge_per_vlan", "bridge_per_vlan")
    assert vlan["l3_interface"] == "br0v10"
    assert [
        (o["kind"], o["name"], o["role"], o["observed_state"]) for o in vlan["kernel_objects"]
    ] == [("bridge", "br0v10", "vlan_bridge", None)]
    # the per-VLAN bridge's name is the VLAN's: no bridge or tap may take it
    problem(api.post("/v1/bridges", json={"name": "br0v10"}), 409, "name-taken")
    # a trunk whose name leaves no room: a short stable name, never a truncated one
    make_bridge(api, "trunk-bridge-01")
    long = make_vlan(api, name="t2", trunk="trunk-bridge-01", vlan_id=4094)
    assert long["backend"] == "vlan_filtering"
    assert re.fullmatch(r"vl[0-9a-f]{6}\.4094", long["l3_interface"]), long  # trunk-bridge-01.4094
    again = api.get("/v1/vlans/t2").json()["l3_interface"]
    assert again == long["l3_interface"]  # stable


def test_duplicates_are_refused(vlan_api: TestClient, settings: Settings) -> None:
    api = vlan_api
    make_bridge(api, "br0")
    make_bridge(api, "br1")
    first = make_vlan(api)
    body = problem(api.post("/v1/vlans", json={**GOOD, "name": "TENANT-A", "trunk": "br1"}), 409)
    assert body["type"] == "urn:kvmnetd:problem:name-taken" and "tenant-a" in body["detail"]
    body = problem(api.post("/v1/vlans", json={**GOOD, "name": "tenant-b"}), 409, "conflict")
    assert "VLAN 10 on trunk 'br0' is VLAN 'tenant-a'" in body["detail"]
    assert body["holder"] == {"id": first["id"], "name": "tenant-a"}
    other = make_vlan(api, name="tenant-b", trunk="br1")  # the same VID on another trunk
    assert other["vlan_id"] == 10
    assert stored(settings, "SELECT count(*) FROM vlans") == [(2,)]


def test_one_trunk_carries_one_backend(vlan_api: TestClient) -> None:
    api = vlan_api
    make_bridge(api, "br0")
    make_vlan(api, backend="bridge_per_vlan")
    body = problem(
        api.post(
            "/v1/vlans",
            json={**GOOD, "name": "b", "vlan_id": 20, "backend": "vlan_filtering"},
        ),
        409,
        "conflict",
    )
    assert "cannot mix backends" in body["detail"]
    assert make_vlan(api, name="c", vlan_id=30)["backend"] == "bridge_per_vlan"  # auto follows


def test_patch_renames_and_describes_but_never_moves_a_vlan(vlan_api: TestClient) -> None:
    api = vlan_api
    make_bridge(api, "br0")
    make_bridge(api, "br1")
    vlan = make_vlan(api)
    make_vlan(api, name="other", vlan_id=20)
    url = f"/v1/vlans/{vlan['id']}"
    r = api.patch(url, json={"name": "Tenant-A2", "description": "renamed"})
    assert r.status_code == 200, r.text
    assert (r.json()["name"], r.json()["description"]) == ("Tenant-A2", "renamed")
    assert r.json()["generation"] == vlan["generation"]  # no kernel object changes
    problem(api.patch(url, json={"name": "OTHER"}), 409, "name-taken")
    for field, value in (("vlan_id", 11), ("trunk", "br1"), ("backend", "bridge_per_vlan")):
        body = problem(api.patch(url, json={field: value}), 422)
        assert [e["loc"] for e in body["errors"]] == [["body", field]]
    after = api.get(url).json()
    assert (after["vlan_id"], after["trunk"], after["backend"]) == (10, "br0", "vlan_filtering")
    problem(api.patch("/v1/vlans/nosuch", json={"description": "x"}), 404, "not-found")


def _admits_null(field: str) -> bool:
    annotation = VlanUpdate.model_fields[field].annotation
    origin = typing.get_origin(annotation)
    return origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(annotation)


CREATE_BODY = {
    "name": "tenant-x",
    "vlan_id": 10,
    "trunk": "br0",
    "backend": "auto",
    "description": "x",
    "project_id": DEFAULT_PROJECT_ID,
}


@pytest.mark.parametrize("field", list(VlanUpdate.model_fields))
def test_null_in_every_patch_field(vlan_api: TestClient, field: str) -> None:
    """As tests/api/test_nulls_api.py derives it from the update model: a field whose type
    admits null resets to what it is when left out at creation, any other refuses null
    with 422 naming it and changes nothing. (That file's generic case needs a resource that
    settles; a VLAN settles only once the supervisor part exists.)"""
    api = vlan_api
    make_bridge(api, "br0")
    assert set(VlanUpdate.model_fields) <= CREATE_BODY.keys()
    row = make_vlan(api, **CREATE_BODY)
    url = f"/v1/vlans/{row['id']}"
    r = api.patch(url, json={field: None})
    if not _admits_null(field) or field in VlanUpdate.fixed_at_creation:
        body = problem(r, 422)
        assert [e["loc"] for e in body["errors"]] == [["body", field]]
        assert _stable(api.get(url).json()) == _stable(row)
        return
    assert r.status_code == 200, r.text
    twin_body = {k: v for k, v in CREATE_BODY.items() if k != field}
    twin = make_vlan(api, **{**twin_body, "name": "twin", "vlan_id": 11})
    assert r.json()[field] == twin[field] != row[field]


def test_delete_and_a_trunk_in_use(vlan_api: TestClient, netns: str, settings: Settings) -> None:
    api = vlan_api
    br0 = make_bridge(api, "br0")
    make_bridge(api, "br1")
    a = make_vlan(api)
    b = make_vlan(api, name="tenant-b", vlan_id=20)
    gone = make_vlan(api, name="tenant-c", trunk="br1")
    # a VLAN's delete is accepted; the row stays (deleting) until its objects are gone
    r = api.delete("/v1/vlans/tenant-c")
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "deleting" and r.json()["id"] == gone["id"]
    # again: nothing new (or, once the supervisor removed it, gone: this kernel has no
    # filtering, so nothing of it can exist)
    assert api.delete("/v1/vlans/tenant-c").status_code in (202, 404)
    r = api.patch("/v1/vlans/tenant-c", json={"description": "x"})
    if r.status_code != 404:
        problem(r, 409, "being-deleted")
    # the trunk is in use while it carries VLANs
    body = problem(api.delete("/v1/bridges/br0"), 409, "in-use")
    assert body["dependents"] == [
        {"kind": "vlan", "id": a["id"], "name": "tenant-a"},
        {"kind": "vlan", "id": b["id"], "name": "tenant-b"},
    ]
    assert api.get("/v1/vlans/tenant-a").json()["status"] != "deleting"
    assert "br0" in links(netns)
    # forced: the VLANs go with it, and the bridge's row can go (no row points at it)
    r = api.delete("/v1/bridges/br0?force=true&wait=10")
    assert r.status_code == 204, r.text
    operation = api.get(r.headers["operation-location"]).json()
    assert operation["detached"] == [
        {"kind": "vlan", "id": a["id"], "name": "tenant-a", "vm_id": None, "action": "deleted"},
        {"kind": "vlan", "id": b["id"], "name": "tenant-b", "vm_id": None, "action": "deleted"},
    ]
    assert "br0" not in links(netns)
    assert api.get(f"/v1/bridges/{br0['id']}").status_code == 404
    # the deleted VLANs went before their trunk's row, with their name claims
    assert [v["name"] for v in api.get("/v1/vlans").json()["items"]] == []
    assert stored(settings, "SELECT name FROM link_names WHERE resource = 'vlan'") == []


# ---- the views: a trunk's and a VLAN's, on this kernel (bridge_per_vlan without an uplink) ----

STATIC_MAC = "52:54:00:0a:0b:0c"


def test_a_trunks_views_include_its_per_vlan_bridges_and_a_plain_bridge_shows_its_own(
    vlan_api: TestClient, netns: str
) -> None:
    """br1 carries VLAN b by a bridge per VLAN (an ordinary bridge here, no uplink): tap
    tapb on the VLAN sits on br1v10, not on br1. The trunk's ports, MAC table and VLAN views
    include it, naming br1v10 (`via`) and VID 10, read back against netlink; the VLAN's
    own views show the same rows; br1v10 is no bridge resource (404 saying where to look).
    br0, a plain bridge with a tap, shows exactly its own ports and entries."""
    api = vlan_api
    make_bridge(api, "br0")
    make_bridge(api, "br1")
    tap1 = api.post("/v1/taps?wait=10", json={"name": "tap1", "bridge": "br0"}).json()
    body = {**GOOD, "name": "b", "trunk": "br1", "backend": "bridge_per_vlan"}
    r = api.post("/v1/vlans?wait=10", json=body)
    assert r.status_code == 201 and r.json()["status"] == "active", r.text
    r = api.post("/v1/taps?wait=10", json={"name": "tapb", "vlan": "b"})
    assert r.status_code == 201, r.text
    tapb = r.json()
    kernel = links(netns)
    assert kernel["tapb"].master == "br1v10" and kernel["tap1"].master == "br0"
    with VlanOps(netns=netns) as ops:
        ops.fdb_add("br1v10", "tapb", STATIC_MAC, None)
        live = {(e.port, e.mac): e for e in ops.fdb("br1v10") if e.port != "br1v10"}
    assert ("tapb", STATIC_MAC) in live and ("tapb", kernel["tapb"].mac) in live, live

    # -- the trunk: its own ports (none), then br1v10's with their VLAN
    ports = api.get("/v1/bridges/br1").json()["ports"]
    assert [(p["name"], p["via"], p["vlan"], p["tap_id"]) for p in ports] == [
        ("tapb", "br1v10", 10, tapb["id"])
    ]
    assert ports[0]["ifindex"] == kernel["tapb"].index
    listed = {x["name"]: x for x in api.get("/v1/bridges").json()["items"]}
    assert listed["br1"]["ports"] == ports
    fdb = api.get("/v1/bridges/br1/fdb").json()
    assert {(e["port"], e["mac"]) for e in fdb} == set(live)
    assert {(e["via"], e["vlan"]) for e in fdb} == {("br1v10", 10)}
    shown = {e["mac"]: e for e in fdb}
    assert shown[STATIC_MAC]["is_local"] is False
    assert shown[kernel["tapb"].mac]["is_local"] is True
    view = api.get("/v1/bridges/br1/vlans").json()
    assert view["filtering_available"] is False and view["vlan_filtering"] is False
    assert view["ports"] == [
        {
            "port": "tapb",
            "vid": 10,
            "pvid": True,
            "untagged": True,
            "ours": True,
            "planned": True,
            "via": "br1v10",
        }
    ]
    # -- the VLAN's own views: the same rows
    assert api.get("/v1/vlans/b/ports").json() == view["ports"]
    ageless = [{**e, "ageing_timer": None} for e in fdb]
    assert [{**e, "ageing_timer": None} for e in api.get("/v1/vlans/b/fdb").json()] == ageless
    # -- br1v10 is the VLAN's link, no bridge resource: 404 saying where its rows are
    for path in ("/v1/bridges/br1v10", "/v1/bridges/br1v10/fdb"):
        found = problem(api.get(path), 404, "not-found")
        assert "VLAN 'b'" in found["detail"] and "/v1/bridges/br1/fdb" in found["detail"], found
    problem(api.get("/v1/vlans/nosuch/fdb"), 404, "not-found")

    # -- a plain bridge: its own ports and entries only, nothing `via` another bridge
    ports = api.get("/v1/bridges/br0").json()["ports"]
    assert [(p["name"], p["via"], p["vlan"], p["tap_id"]) for p in ports] == [
        ("tap1", None, None, tap1["id"])
    ]
    fdb = api.get("/v1/bridges/br0/fdb").json()
    assert {(e["port"], e["mac"], e["via"], e["vlan"]) for e in fdb} == {
        ("tap1", kernel["tap1"].mac, None, None)
    }
    assert api.get("/v1/bridges/br0/vlans").json()["ports"] == []
