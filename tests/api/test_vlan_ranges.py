"""VLAN ids from a project's ranges (issue 11, item 4): a VLAN created without `vlan_id`
gets the lowest id of its project's `vlan_ranges` that is free on the trunk; a member's
explicit id must lie in them (403 naming the ranges), an admin's may be any; exhausted
ranges are 409; an admin in a project without ranges must give an id (422).

This machine's kernel carries no VLAN, and its refusal (409 host-lacks-feature) comes after
the range checks: the first test proves their order on the real probe. The rest use
`vlan_api` (tests/api/test_vlans_api.py: the real inspector, whose probe answer says the
kernel has VLANs) so that VLANs are stored and their ids can be read back; the kernel tier
(tests/kernel/nested/test_vlan_projects.py) realizes project VLANs on a kernel that has them.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.db.models import Vlan
from app.db.session import Database
from app.domain.tenancy import Caller, Principal, Role, Via
from app.domain.vlans import VlanFacts
from app.schemas.vlans import VlanCreate
from app.services.vlans import VidTakenMeanwhile, VlanService
from tests.api.test_vlans_api import LACKS, make_bridge, problem
from tests.api.test_vlans_api import vlan_api as vlan_api
from tests.tenancy import auth, make_project, make_token

OUTSIDE = "vlan-id-outside-ranges"
EXHAUSTED = "vlan-ranges-exhausted"


def _db(api: TestClient) -> Database:
    db: Database = api.app.state.context.db  # type: ignore[attr-defined]
    return db


def member_of(
    api: TestClient, name: str, ranges: list[list[int]], trunk: dict[str, Any]
) -> dict[str, str]:
    """A member token of a new project with these VLAN ranges, the admin's `trunk` shared
    with it (its shared_segments: a member may ride on its own or shared bridges only)."""
    db = _db(api)
    shared = [{"resource": "bridge", "id": trunk["id"]}]
    project = make_project(db, name, vlan_ranges=ranges, shared_segments=shared)
    return auth(make_token(db, project, "member"))


def vlan(api: TestClient, headers: dict[str, str] | None = None, **fields: Any) -> Any:
    return api.post("/v1/vlans", json={"trunk": "br0", **fields}, headers=headers or {})


def vids(api: TestClient) -> dict[str, int]:
    return {v["name"]: v["vlan_id"] for v in api.get("/v1/vlans").json()["items"]}


def test_on_this_kernel_range_checks_come_before_host_lacks_feature(api: TestClient) -> None:
    caps = api.get("/v1/host/capabilities").json()["links"]
    if caps["vlan_8021q"]["available"] or caps["vlan_filtering"]["available"]:
        pytest.skip("this host's kernel has VLANs: the refusal this order is seen by is absent")
    trunk = make_bridge(api, "br0")
    member = member_of(api, "acme", [[10, 10]], trunk)
    body = problem(vlan(api, member, name="a", vlan_id=11), 403, OUTSIDE)
    assert body["vlan_ranges"] == [[10, 10]] and "ranges (10)" in body["detail"]
    problem(vlan(api, member, name="a"), 409, LACKS.rsplit(":", 1)[1])  # 10 is free
    with _db(api).unit_of_work() as session:  # 10 taken on the trunk, by a row of another
        session.add(Vlan(name="held", vlan_id=10, trunk_id=trunk["id"], backend="vlan_filtering"))
    body = problem(vlan(api, member, name="a"), 409, EXHAUSTED)
    assert "all taken" in body["detail"] and body["vlan_ranges"] == [[10, 10]]
    problem(vlan(api, name="b"), 422)  # the admin's default project has no ranges


def test_ids_are_drawn_in_order_from_each_projects_ranges(vlan_api: TestClient) -> None:
    api = vlan_api
    trunk = make_bridge(api, "br0")
    acme = member_of(api, "acme", [[100, 101], [10, 11]], trunk)  # drawn lowest first
    globex = member_of(api, "globex", [[20, 20]], trunk)
    for name in ("a1", "a2", "a3"):
        assert vlan(api, acme, name=name).status_code == 202
    assert vlan(api, globex, name="g1").status_code == 202
    assert vids(api) == {"a1": 10, "a2": 11, "a3": 100, "g1": 20}

    # a member's own id: inside its ranges only (an id another project's range holds too)
    body = problem(vlan(api, globex, name="g2", vlan_id=100), 403, OUTSIDE)
    assert body["vlan_id"] == 100 and body["vlan_ranges"] == [[20, 20]]
    problem(vlan(api, globex, name="g2"), 409, EXHAUSTED)
    # an admin may use any id, also one of a project's ranges: 101 is then not free
    assert vlan(api, name="x", vlan_id=101).status_code == 202
    body = problem(vlan(api, acme, name="a4"), 409, EXHAUSTED)
    assert body["vlan_ranges"] == [[10, 11], [100, 101]] and "br0" in body["detail"]
    assert vlan(api, acme, name="a4", vlan_id=10).status_code == 409  # in range, but held
    # the admin's default project has no ranges: an id is needed
    body = problem(vlan(api, name="y"), 422)
    assert "give vlan_id" in body["detail"]
    assert vlan(api, name="y", vlan_id=3000).status_code == 202
    assert vids(api) == {"a1": 10, "a2": 11, "a3": 100, "g1": 20, "x": 101, "y": 3000}


def test_a_vid_taken_after_the_host_was_asked_about_it_is_refused_to_choose_again(
    vlan_api: TestClient,
) -> None:
    """The API asks the host about the kernel names of the VID it chose before the write
    transaction; if another create took that VID meanwhile the service refuses
    (VidTakenMeanwhile) and the API chooses again, rather than skip the foreign-name
    check for the VID it ends up with."""
    trunk = make_bridge(vlan_api, "br0")
    db = _db(vlan_api)
    shared = [{"resource": "bridge", "id": trunk["id"]}]
    project = make_project(db, "acme", vlan_ranges=[[10, 19]], shared_segments=shared)
    member = Caller(Principal(project, Role.MEMBER, Via.TOKEN))
    facts = VlanFacts({})
    with db.unit_of_work() as session:
        VlanService(session, member).create(
            VlanCreate(name="a", trunk="br0"), facts, {}, probed_vid=10
        )
    with pytest.raises(VidTakenMeanwhile), db.unit_of_work() as session:
        VlanService(session, member).create(
            VlanCreate(name="b", trunk="br0"), facts, {}, probed_vid=10
        )
    with db.unit_of_work() as session:
        assert VlanService(session, member).next_vid("br0") == 11
