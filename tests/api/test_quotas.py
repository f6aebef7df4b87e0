"""Quotas (app.services.quotas): every create a quota limits, and a VM PATCH that raises
vcpus or memory, is refused with 409 `over-quota` naming the quota, its limit, the usage
and what was asked, and stores nothing; a resource being deleted no longer counts.
GET /v1/projects/{id}/usage shows every quota's limit and usage, to the project's own
tokens and to admins only. Stopped VMs: no qemu runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.db.models import Bridge, Network, PortForward, Project, Tap, Vlan, Vm
from app.db.session import Database
from app.domain.tenancy import DEFAULT_PROJECT_ID, Quota
from tests.api.test_vlans_api import vlan_api as vlan_api
from tests.tenancy import auth, make_project, make_token

OVER_QUOTA = "urn:kvmnetd:problem:over-quota"


def _db(api: TestClient) -> Database:
    db: Database = api.app.state.context.db  # type: ignore[attr-defined]
    return db


def member_of(
    api: TestClient, name: str, shared: list[dict[str, str]] | None = None, **quotas: int
) -> tuple[str, dict[str, str]]:
    """A project with these quotas (and these shared segments of other projects) and a
    member token's headers."""
    db = _db(api)
    project = make_project(db, name, quotas=quotas, shared_segments=shared or [])
    return project, auth(make_token(db, project, "member"))


def rows(api: TestClient, model: Any, project: str) -> int:
    with _db(api).reading() as session:
        query = select(func.count()).select_from(model).where(model.project_id == project)
        return int(session.scalar(query) or 0)


def vm_body(tmp_path: Path, name: str, **extra: Any) -> dict[str, Any]:
    """A stopped VM on a disk in the tenants' images directory (STATE_DIR/images: the
    `settings` fixture's state directory is tmp_path/state)."""
    disk = tmp_path / "state" / "images" / "empty.img"
    disk.parent.mkdir(exist_ok=True)
    disk.touch()
    return {"name": name, "memory_mib": 32, "boot": {"disk": str(disk)}, **extra} | {
        "power_state": "stopped"
    }


def assert_over(answer: Any, quota: Quota, limit: int, usage: int, requested: int) -> None:
    assert answer.status_code == 409, answer.text
    problem = answer.json()
    assert problem["type"] == OVER_QUOTA
    assert (problem["quota"], problem["limit"], problem["usage"], problem["requested"]) == (
        quota.value,
        limit,
        usage,
        requested,
    ), problem
    assert quota.value in problem["detail"]


def test_taps_count_up_to_the_limit_and_a_deleted_one_frees_its_share(
    api: TestClient,
) -> None:
    project, member = member_of(api, "acme", taps=2)
    for name in ("qt1", "qt2"):
        assert api.post("/v1/taps", json={"name": name}, headers=member).status_code == 202
    assert_over(api.post("/v1/taps", json={"name": "qt3"}, headers=member), Quota.TAPS, 2, 2, 1)
    assert rows(api, Tap, project) == 2  # nothing stored
    assert api.get("/v1/taps/qt3").status_code == 404
    # being deleted no longer counts (the delete is accepted: the share is free at once)
    assert api.delete("/v1/taps/qt1", headers=member).status_code == 202
    assert api.post("/v1/taps", json={"name": "qt3"}, headers=member).status_code == 202
    # another project's quota is its own; the default project has none
    assert api.post("/v1/taps", json={"name": "qt4"}).status_code == 202
    assert rows(api, Tap, DEFAULT_PROJECT_ID) == 1


def test_vm_quotas_on_create_and_on_a_patch_that_raises_vcpus_or_memory(
    api: TestClient, tmp_path: Path
) -> None:
    project, member = member_of(api, "acme", vms=2, vcpus=3, memory_mib=96)
    first = api.post("/v1/vms", json=vm_body(tmp_path, "a", vcpus=2), headers=member)
    assert first.status_code == 202, first.text
    vm = first.json()
    assert_over(
        api.post("/v1/vms", json=vm_body(tmp_path, "b", vcpus=2), headers=member),
        Quota.VCPUS,
        3,
        2,
        2,
    )
    assert_over(
        api.post("/v1/vms", json=vm_body(tmp_path, "b", memory_mib=65), headers=member),
        Quota.MEMORY_MIB,
        96,
        32,
        65,
    )
    assert rows(api, Vm, project) == 1
    assert api.post("/v1/vms", json=vm_body(tmp_path, "b"), headers=member).status_code == 202
    assert_over(
        api.post("/v1/vms", json=vm_body(tmp_path, "c"), headers=member), Quota.VMS, 2, 2, 1
    )
    # a PATCH asks for what it adds: 2 -> 3 vCPUs fits no more (3 of 3 in use already)
    assert_over(
        api.patch(f"/v1/vms/{vm['id']}", json={"vcpus": 3}, headers=member),
        Quota.VCPUS,
        3,
        3,
        1,
    )
    assert_over(
        api.patch(f"/v1/vms/{vm['id']}", json={"memory_mib": 80}, headers=member),
        Quota.MEMORY_MIB,
        96,
        64,
        48,
    )
    unchanged = api.get(f"/v1/vms/{vm['id']}").json()
    assert (unchanged["vcpus"], unchanged["memory_mib"], unchanged["generation"]) == (2, 32, 1)
    # lowering asks for nothing, and frees a share that raising may take again
    for change in ({"vcpus": 1}, {"vcpus": 2}, {"memory_mib": 64}):
        answer = api.patch(f"/v1/vms/{vm['id']}", json=change, headers=member)
        assert answer.status_code in (200, 202), answer.text
    usage = api.get(f"/v1/projects/{project}/usage", headers=member).json()["quotas"]
    assert usage["vms"] == {"limit": 2, "usage": 2}
    assert usage["vcpus"] == {"limit": 3, "usage": 3}
    assert usage["memory_mib"] == {"limit": 96, "usage": 96}


@pytest.mark.parametrize(
    ("quota", "path", "body", "model"),
    [
        (Quota.BRIDGES, "/v1/bridges", {"name": "qbr1"}, Bridge),
        (
            Quota.NETWORKS,
            "/v1/networks",
            {"name": "n", "bridge": "qbr0", "subnet": "10.9.0.0/24"},
            Network,
        ),
        (Quota.VLANS, "/v1/vlans", {"name": "v", "trunk": "qbr0", "vlan_id": 10}, Vlan),
        (
            Quota.PORT_FORWARDS,
            "/v1/port-forwards",
            {"network": "n", "vm": "a", "port": 2222},
            PortForward,
        ),
        (
            Quota.PORT_FORWARDS,
            "/v1/port-forwards/batch",
            {"port_forwards": [{"network": "n", "vm": "a", "port": p} for p in (1, 2)]},
            PortForward,
        ),
    ],
)
def test_each_kind_is_refused_at_its_limit(
    api: TestClient, quota: Quota, path: str, body: dict[str, Any], model: Any
) -> None:
    """A limit of 0 refuses the first create (the guard comes before the request's other
    checks, as Neutron's quota check does); a batch asks for all its items at once."""
    trunk = api.post("/v1/bridges", json={"name": "qbr0"})  # the admin's, shared: a trunk
    assert trunk.status_code == 202, trunk.text
    shared = [{"resource": "bridge", "id": trunk.json()["id"]}]
    project, member = member_of(api, "acme", shared, **{quota.value: 0})
    asked = len(body.get("port_forwards", [None]))
    assert_over(api.post(path, json=body, headers=member), quota, 0, 0, asked)
    assert rows(api, model, project) == 0


def test_usage_is_shown_to_the_project_and_to_admins_only(api: TestClient) -> None:
    db = _db(api)
    project, member = member_of(api, "acme", taps=5, vms=0)
    other = make_project(db, "globex")
    reader = auth(make_token(db, other, "reader"))
    assert api.post("/v1/taps", json={"name": "qt1"}, headers=member).status_code == 202

    own = api.get(f"/v1/projects/{project}/usage", headers=member)
    assert own.status_code == 200, own.text
    body = own.json()
    assert (body["project_id"], body["name"]) == (project, "acme")
    assert set(body["quotas"]) == {q.value for q in Quota}
    assert body["quotas"]["taps"] == {"limit": 5, "usage": 1}
    assert body["quotas"]["vms"] == {"limit": 0, "usage": 0}
    assert body["quotas"]["bridges"] == {"limit": None, "usage": 0}  # absent: unlimited
    assert api.get("/v1/projects/ACME/usage", headers=member).json() == body  # by name

    # another project is 404 (not 403: its existence is not revealed), as an unknown one
    for ref in (project, "acme", "nope"):
        answer = api.get(f"/v1/projects/{ref}/usage", headers=reader)
        assert answer.status_code == 404, answer.text
    assert api.get(f"/v1/projects/{other}/usage", headers=reader).status_code == 200
    # an admin (the unix socket) sees any project
    assert api.get(f"/v1/projects/{project}/usage").json() == body
    assert api.get("/v1/projects/default/usage").json()["project_id"] == DEFAULT_PROJECT_ID


def test_a_stored_limit_that_is_not_a_count_refuses_rather_than_unlimits(api: TestClient) -> None:
    project, member = member_of(api, "acme")
    with _db(api).unit_of_work() as session:
        row = session.get(Project, project)
        assert row is not None
        row.quotas = {"taps": "ten"}
    answer = api.post("/v1/taps", json={"name": "qt1"}, headers=member)
    assert answer.status_code == 409 and "ten" in answer.json()["detail"], answer.text
    assert answer.json()["type"] == "urn:kvmnetd:problem:unreadable-quota"
    assert rows(api, Tap, project) == 0


def test_segments_count_bridges_and_vlans_together(vlan_api: TestClient) -> None:
    """`segments` (Neutron's `network` quota) limits bridges and VLANs as one count; each
    kind's own quota still applies, and usage shows all three."""
    api = vlan_api
    trunk = api.post("/v1/bridges", json={"name": "qbr0"})  # the admin's, shared: a trunk
    assert trunk.status_code == 202, trunk.text
    shared = [{"resource": "bridge", "id": trunk.json()["id"]}]
    db = _db(api)
    project = make_project(
        db, "acme", quotas={"segments": 2}, shared_segments=shared, vlan_ranges=[[100, 199]]
    )
    member = auth(make_token(db, project, "member"))
    assert api.post("/v1/bridges", json={"name": "qbr1"}, headers=member).status_code == 202
    vlan = api.post("/v1/vlans", json={"name": "v", "trunk": "qbr0"}, headers=member)
    assert vlan.status_code == 202, vlan.text
    assert_over(
        api.post("/v1/bridges", json={"name": "qbr2"}, headers=member), Quota.SEGMENTS, 2, 2, 1
    )
    assert_over(
        api.post("/v1/vlans", json={"name": "w", "trunk": "qbr0"}, headers=member),
        Quota.SEGMENTS,
        2,
        2,
        1,
    )
    assert (rows(api, Bridge, project), rows(api, Vlan, project)) == (1, 1)
    usage = api.get(f"/v1/projects/{project}/usage", headers=member).json()["quotas"]
    assert usage["segments"] == {"limit": 2, "usage": 2}
    assert usage["bridges"] == {"limit": None, "usage": 1}
    assert usage["vlans"] == {"limit": None, "usage": 1}
    # a deleted VLAN frees its share at once
    assert api.delete(f"/v1/vlans/{vlan.json()['id']}", headers=member).status_code == 202
    assert api.post("/v1/bridges", json={"name": "qbr2"}, headers=member).status_code == 202
