"""What `null` means in every PATCH field, derived from the update models themselves (a new
field is covered, or this file fails until it is): a field whose type admits null resets to
what the field is when left out at creation; any other field refuses null with 422 naming
it and changes nothing. Each case runs against the real kernel of a fresh namespace."""

from __future__ import annotations

import sqlite3
import time
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from app.schemas.common import UpdateModel
from app.schemas.links import BridgeUpdate, TapUpdate
from app.schemas.networks import NetworkUpdate
from app.schemas.ports import PortUpdate
from app.schemas.projects import ProjectUpdate
from app.schemas.vlans import VlanUpdate
from app.schemas.vms import NicPatch, VmPatch
from app.settings import Settings
from tests.netns_tools import links

PROBLEM = "application/problem+json"


@dataclass(frozen=True)
class Resource:
    """One resource with a PATCH: how to create it with a non-default value in every field
    its update model has, and where each field shows in the answer."""

    collection: str
    update: type[UpdateModel]
    body: dict[str, Any]  # every update field set to something other than its default
    needs: tuple[tuple[str, dict[str, Any]], ...] = ()  # created first (collection, body)
    shown_as: tuple[tuple[str, str], ...] = ()  # update field -> response field

    def shown(self, field: str) -> str:
        return dict(self.shown_as).get(field, field)


RESOURCES = (
    Resource(
        "bridges",
        BridgeUpdate,
        {
            "name": "brx",
            "stp": True,
            "forward_delay": 4,
            "mtu": 1400,
            "mac": "02:00:00:00:0a:01",
            "addresses": ["192.168.105.1/24"],
        },
    ),
    Resource(
        "taps",
        TapUpdate,
        {
            "name": "tapx",
            "bridge": "brp",
            "mtu": 1400,
            "mac": "02:00:00:00:0b:01",
            "addresses": ["192.168.106.1/24"],
            "owner_uid": 65534,
            "owner_gid": 65534,
            "multi_queue": True,
        },
        needs=(("bridges", {"name": "brp"}),),
        shown_as=(("bridge", "bridge_id"),),
    ),
    Resource(
        "networks",
        NetworkUpdate,
        {
            "name": "natx",
            "subnet": "10.93.0.0/24",
            "nat": {"enabled": False},
            "dhcp": {"lease_time": 600},
            "domain": "x.test",
            "dns_nameservers": ["10.93.0.53"],
            "host_routes": [{"destination": "10.94.0.0/16", "nexthop": "10.93.0.254"}],
            "description": "lab",
        },
        needs=(("bridges", {"name": "brn"}),),
    ),
    Resource(
        "ports",
        PortUpdate,
        {
            "name": "px",
            "bridge": "brq",
            "description": "db",
            "device_id": "d1",
            "device_owner": "o1",
            "admin_state_up": True,
        },
        needs=(("bridges", {"name": "brq"}),),
    ),
)


# Covered by their own file the same way, until the resource settles here: a VLAN settles
# only once the supervisor makes its kernel objects (tests/api/test_vlans_api.py); a VM's
# PATCH fields are read by qemu at start (tests/api/test_vm_patch.py); a project is no
# reconciled resource (tests/api/test_projects_api.py sends null in each of its fields).
# A VM NIC's rate limits (NicPatch) are no resource of their own: null in each is sent in
# tests/api/test_nic_rate_limits.py.
COVERED_ELSEWHERE = {VlanUpdate, VmPatch, ProjectUpdate, NicPatch}


def _settable(update: type[UpdateModel]) -> list[str]:
    """The fields a PATCH may change (not those fixed at creation, which only refuse:
    tests/api/test_trial2_fixes.py)."""
    return [f for f in update.model_fields if f not in update.fixed_at_creation]


# Single fields covered the same way in their own file: a tap's `vlan` needs a stored VLAN,
# which needs the injected kernel features (tests/api/test_nic_vlans_api.py); a tap's
# `isolated` needs a bridge (a twin without `bridge` is a 422) and the capability probe
# (tests/api/test_isolation_api.py: null is false, in a create and a PATCH).
# A port's `ipv4` (null: the lowest free address, which a twin created after it cannot
# share) and `fixed_ip` (null refused) are covered in tests/api/test_ports_api.py.
FIELDS_ELSEWHERE = {
    (TapUpdate, "vlan"),
    (TapUpdate, "isolated"),
    (PortUpdate, "ipv4"),
    (PortUpdate, "fixed_ip"),
}


def test_every_update_model_is_covered() -> None:
    """A new PATCH body (a subclass of UpdateModel) must be added to RESOURCES, and every
    field of each must have a non-default value in its creation body."""
    assert set(UpdateModel.__subclasses__()) == {r.update for r in RESOURCES} | COVERED_ELSEWHERE
    for resource in RESOURCES:
        fields = {
            f for f in _settable(resource.update) if (resource.update, f) not in FIELDS_ELSEWHERE
        }
        assert fields <= resource.body.keys(), resource.collection


def _admits_null(model: type[BaseModel], field: str) -> bool:
    annotation = model.model_fields[field].annotation
    origin = typing.get_origin(annotation)
    return origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(annotation)


CASES = [
    pytest.param(resource, field, id=f"{resource.collection}.{field}")
    for resource in RESOURCES
    for field in _settable(resource.update)
    if (resource.update, field) not in FIELDS_ELSEWHERE
]


def _create(api: TestClient, resource: Resource, body: dict[str, Any]) -> dict[str, Any]:
    if resource.collection == "networks":
        body = {"bridge": resource.needs[0][1]["name"], **body}
    r = api.post(f"/v1/{resource.collection}?wait=10", json=body)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize(("resource", "field"), CASES)
def test_null_in_every_patch_field(
    api: TestClient, netns: str, resource: Resource, field: str
) -> None:
    for collection, body in resource.needs:
        r = api.post(f"/v1/{collection}?wait=10", json=body)
        assert r.status_code == 201, r.text
    row = _create(api, resource, resource.body)
    url = f"/v1/{resource.collection}/{row['id']}"
    r = api.patch(f"{url}?wait=10", json={field: None})
    if not _admits_null(resource.update, field):
        assert r.status_code == 422, r.text
        assert r.headers["content-type"] == PROBLEM
        assert [e["loc"] for e in r.json()["errors"]] == [["body", field]]
        after = api.get(url).json()
        assert after["generation"] == row["generation"]  # nothing changed
        assert after[resource.shown(field)] == row[resource.shown(field)]
        return
    assert r.status_code == 200, r.text
    patched = r.json()
    assert patched["status"] == "active", patched
    # null means: what the field is when it is left out at creation (same other fields)
    twin_body = {k: v for k, v in resource.body.items() if k != field}
    twin_body["name"] = f"{resource.body['name']}t"
    if "addresses" in twin_body:  # an address is one link's only (409 naming the holder)
        twin_body["addresses"] = ["192.168.199.1/24"]
    if resource.collection == "networks":
        twin_body["subnet"] = "10.94.0.0/24"
        if "host_routes" in twin_body:  # a nexthop is a host of the network's own subnet
            twin_body["host_routes"] = [{"destination": "10.95.0.0/16", "nexthop": "10.94.0.9"}]
        api.post("/v1/bridges?wait=10", json={"name": "brt"}).raise_for_status()
        twin_body["bridge"] = "brt"
        r = api.post(f"/v1/{resource.collection}?wait=10", json=twin_body)
        assert r.status_code == 201, r.text
        twin = r.json()
    else:
        twin = _create(api, resource, twin_body)
    shown = resource.shown(field)
    assert patched[shown] == twin[shown]
    assert patched[shown] != row[shown]  # the null did change something
    # and the supervisor keeps working on it and on others: a later change still settles
    again = api.get(url).json()
    assert again["status"] == "active"
    assert again[shown] == twin[shown]
    r = api.post("/v1/bridges?wait=10", json={"name": "brafter"})
    assert r.status_code == 201, r.text


# ---- rows the worker cannot read ---------------------------------------------------------

GARBAGE = [
    pytest.param("bridges", "addresses", "'null'", id="bridge-addresses-json-null"),
    pytest.param("bridges", "addresses", "'garbage{'", id="bridge-addresses-not-json"),
    pytest.param("bridges", "forward_delay_cs", "'abc'", id="bridge-forward-delay-text"),
    pytest.param("bridges", "mtu", "99999999", id="bridge-mtu-out-of-range"),
    pytest.param("bridges", "mac", "'zz'", id="bridge-mac-garbage"),
    pytest.param("taps", "addresses", "'{\"a\": 1}'", id="tap-addresses-object"),
    pytest.param("taps", "owner_uid", "-5", id="tap-owner-negative"),
]


def poison(settings: Settings, table: str, name: str, column: str, value: str) -> None:
    """Write garbage the way a hand edit or an older version would: past the constraints."""
    with sqlite3.connect(settings.state_dir / "kvmnetd.db") as conn:
        conn.execute("PRAGMA ignore_check_constraints = ON")
        conn.execute(f"UPDATE {table} SET {column} = {value} WHERE name = ?", (name,))


def stored_status(settings: Settings, table: str, name: str) -> tuple[str, str | None]:
    with sqlite3.connect(settings.state_dir / "kvmnetd.db") as conn:
        row = conn.execute(
            f"SELECT status, status_reason FROM {table} WHERE name = ?", (name,)
        ).fetchone()
    return row[0], row[1]


def wait_for(predicate: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize(("table", "column", "value"), GARBAGE)
def test_a_row_the_worker_cannot_read_is_reported_on_that_row(
    api: TestClient, netns: str, settings: Settings, table: str, column: str, value: str
) -> None:
    api.post("/v1/bridges?wait=10", json={"name": "br0"}).raise_for_status()
    api.post(
        "/v1/bridges?wait=10", json={"name": "bad0", "addresses": ["192.168.107.1/24"]}
    ).raise_for_status()
    api.post("/v1/taps?wait=10", json={"name": "badtap", "bridge": "bad0"}).raise_for_status()
    name = "bad0" if table == "bridges" else "badtap"
    poison(settings, table, name, column, value)
    supervisor = api.app.state.supervisor  # type: ignore[attr-defined]
    supervisor.resync()  # a full pass: the one that also sweeps orphans
    wait_for(lambda: stored_status(settings, table, name)[0] == "error")
    status, reason = stored_status(settings, table, name)
    assert reason is not None and column.removesuffix("_cs") in reason, reason
    # the API keeps answering for that row and the others
    r = api.get(f"/v1/{table}/{name}")
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["status_reason"]) == ("error", reason)
    for collection in ("bridges", "taps"):
        r = api.get(f"/v1/{collection}")
        assert r.status_code == 200, r.text
    # other links still settle, and the bad row's link is no orphan: it stays as it was
    r = api.post("/v1/bridges?wait=10", json={"name": "br1"})
    assert r.status_code == 201, r.text
    for _ in range(2):  # two full passes over the bad row (an idle supervisor runs no more)
        passes = supervisor.passes
        supervisor.resync()
        wait_for(lambda p=passes: supervisor.passes > p)  # type: ignore[misc]
    kernel = links(netns)
    assert {"br0", "br1", "bad0", "badtap"} <= kernel.keys()
    assert kernel["badtap"].master == "bad0"
    # reported once: further passes write nothing new
    assert stored_status(settings, table, name) == (status, reason)
    # and the bad row can go
    if table == "bridges":
        api.delete("/v1/taps/badtap?wait=10").raise_for_status()
    r = api.delete(f"/v1/{table}/{name}?wait=10")
    assert r.status_code == 204, r.text
    assert name not in links(netns)
    assert api.get(f"/v1/{table}/{name}").status_code == 404


def test_a_patch_that_sets_the_bad_value_again_heals_the_row(
    api: TestClient, netns: str, settings: Settings
) -> None:
    api.post("/v1/bridges?wait=10", json={"name": "bad0"}).raise_for_status()
    poison(settings, "bridges", "bad0", "addresses", "'null'")
    api.app.state.supervisor.resync()  # type: ignore[attr-defined]
    wait_for(lambda: stored_status(settings, "bridges", "bad0")[0] == "error")
    r = api.patch("/v1/bridges/bad0?wait=10", json={"addresses": ["192.168.108.1/24"]})
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["status_reason"]) == ("active", None)
    assert "192.168.108.1/24" in links(netns)["bad0"].addresses
