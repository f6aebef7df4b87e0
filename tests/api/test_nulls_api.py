"""What `null` means in every PATCH field, derived from the update models themselves (a new
field is covered, or this file fails until it is): a field whose type admits null resets to
what the field is when left out at creation; any other field refuses null with 422 naming
it and changes nothing. Each case runs against the real kernel of a fresh namespace."""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from app.schemas.common import UpdateModel
from app.schemas.links import BridgeUpdate, TapUpdate
from app.schemas.networks import NetworkUpdate

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
        },
        needs=(("bridges", {"name": "brn"}),),
    ),
)


def test_every_update_model_is_covered() -> None:
    """A new PATCH body (a subclass of UpdateModel) must be added to RESOURCES, and every
    field of each must have a non-default value in its creation body."""
    assert set(UpdateModel.__subclasses__()) == {r.update for r in RESOURCES}
    for resource in RESOURCES:
        assert set(resource.update.model_fields) <= resource.body.keys(), resource.collection


def _admits_null(model: type[BaseModel], field: str) -> bool:
    annotation = model.model_fields[field].annotation
    origin = typing.get_origin(annotation)
    return origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(
        annotation
    )


CASES = [
    pytest.param(resource, field, id=f"{resource.collection}.{field}")
    for resource in RESOURCES
    for field in resource.update.model_fields
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
    if resource.collection == "networks":
        twin_body["subnet"] = "10.94.0.0/24"
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
