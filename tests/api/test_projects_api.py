"""The projects and tokens API (issue 11 items 1 and 2): CRUD and validation (null and
hostile input too), shared segments, the secret shown once and never stored, revocation and
expiry effective at once, last use, the role rules, and a project's delete refused while it
holds resources."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from app.db.models import ApiToken, Bridge, Tap
from app.db.session import Database
from app.domain.tenancy import DEFAULT_PROJECT_ID, secret_hash
from tests.tenancy import auth, make_project, make_token

QUOTAS = [
    "vms",
    "vcpus",
    "memory_mib",
    "taps",
    "bridges",
    "vlans",
    "segments",
    "networks",
    "port_forwards",
    "ports",  # every quota is shown (QuotasOut lost `ports` once)
]


def _db(api: TestClient) -> Database:
    db: Database = api.app.state.context.db  # type: ignore[attr-defined]
    return db


def _set_clock(api: TestClient, at: dt.datetime) -> None:
    api.app.state.context.clock = lambda: at  # type: ignore[attr-defined]


def _wait_last_use(api: TestClient) -> None:
    api.app.state.last_use.wait()  # type: ignore[attr-defined]


def _problem(r: Any, status: int, *words: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body: dict[str, Any] = r.json()
    for word in words:
        assert word in r.text, (word, r.text)
    return body


def _token(
    api: TestClient, project: str, headers: dict[str, str] | None = None, **body: Any
) -> Any:
    return api.post(f"/v1/projects/{project}/tokens", json=body, headers=headers or {})


def test_projects_crud_and_validation(api: TestClient) -> None:
    r = api.post(
        "/v1/projects",
        json={
            "name": "Acme",
            "description": "team A",
            "quotas": {"vms": 10, "memory_mib": 16384, "taps": None},
            "vlan_ranges": [[300, 399], [100, 199]],
        },
    )
    assert r.status_code == 201, r.text
    acme = r.json()
    assert acme["quotas"] == {q: None for q in QUOTAS} | {"vms": 10, "memory_mib": 16384}
    assert acme["vlan_ranges"] == [[100, 199], [300, 399]]  # sorted
    assert acme["shared_segments"] == [] and acme["description"] == "team A"
    # found by id and by name in any case; unique without regard to case
    assert api.get(f"/v1/projects/{acme['id']}").json() == acme
    assert api.get("/v1/projects/ACME").json() == acme
    _problem(api.post("/v1/projects", json={"name": "acme"}), 409, "name-taken")
    # nulls at creation: what leaving the field out means
    r = api.post(
        "/v1/projects",
        json={
            "name": "b",
            "description": None,
            "quotas": None,
            "vlan_ranges": None,
            "shared_segments": None,
        },
    )
    assert r.status_code == 201, r.text
    assert r.json()["quotas"] == {q: None for q in QUOTAS} and r.json()["vlan_ranges"] == []
    names = [p["name"] for p in api.get("/v1/projects").json()["items"]]
    assert names == ["default", "Acme", "b"]

    bad: list[tuple[dict[str, Any], str]] = [
        ({"name": None}, "name"),
        ({"name": ""}, "name"),
        ({"name": "-x"}, "RFC 1123"),
        ({"name": "a" * 64}, "never truncated"),
        ({"name": "a b"}, "RFC 1123"),
        ({"name": "x", "quotas": {"cpus": 1}}, "vms, vcpus, memory_mib"),
        ({"name": "x", "quotas": {"vms": -1}}, "quotas.vms"),
        ({"name": "x", "quotas": {"vms": "1"}}, "quotas.vms"),
        ({"name": "x", "quotas": {"vms": 1.5}}, "quotas.vms"),
        ({"name": "x", "quotas": {"vms": True}}, "quotas.vms"),
        ({"name": "x", "quotas": [1]}, "quotas"),
        ({"name": "x", "vlan_ranges": [[0, 10]]}, "vlan_ranges"),
        ({"name": "x", "vlan_ranges": [[1, 4095]]}, "vlan_ranges"),
        ({"name": "x", "vlan_ranges": [[20, 10]]}, "first must be <= last"),
        ({"name": "x", "vlan_ranges": [[10, 20], [20, 30]]}, "overlap"),
        ({"name": "x", "vlan_ranges": [[10]]}, "vlan_ranges"),
        ({"name": "x", "vlan_ranges": [[10, 20, 30]]}, "vlan_ranges"),
        ({"name": "x", "shared_segments": [{"resource": "vm", "id": "x"}]}, "resource"),
        ({"name": "x", "shared_segments": [{"resource": "bridge", "id": ""}]}, "id"),
        ({"name": "x", "id": "00000000-0000-4000-8000-000000000001"}, "id"),
        ({"name": "x", "description": "two\nlines"}, "control character"),
    ]
    for body, word in bad:
        _problem(api.post("/v1/projects", json=body), 422, word)
    hostile = b'{"name": "x", "name": "y"}'
    r = api.post("/v1/projects", content=hostile, headers={"Content-Type": "application/json"})
    _problem(r, 422, "appears twice")
    _problem(api.get("/v1/projects?name=acme"), 422, "unknown query parameter")
    assert [p["name"] for p in api.get("/v1/projects").json()["items"]] == names  # nothing made

    # PATCH: quotas merge key by key, null per key unlimits, null for all resets
    r = api.patch("/v1/projects/acme", json={"quotas": {"vms": 20, "memory_mib": None, "taps": 4}})
    assert r.status_code == 200, r.text
    assert r.json()["quotas"] == {q: None for q in QUOTAS} | {"vms": 20, "taps": 4}
    r = api.patch(
        "/v1/projects/acme", json={"name": "acme2", "description": None, "vlan_ranges": None}
    )
    assert r.status_code == 200, r.text
    assert (r.json()["name"], r.json()["description"], r.json()["vlan_ranges"]) == (
        "acme2",
        None,
        [],
    )
    assert api.patch("/v1/projects/acme2", json={"quotas": None}).json()["quotas"] == {
        q: None for q in QUOTAS
    }
    _problem(api.patch("/v1/projects/acme2", json={"name": None}), 422, "name")
    _problem(api.patch("/v1/projects/acme2", json={"name": "B"}), 409, "name-taken")
    _problem(api.patch("/v1/projects/acme2", json={"quotas": {"disks": 1}}), 422, "vms, vcpus")
    _problem(api.patch("/v1/projects/nope", json={}), 404)
    # the default project stays
    _problem(api.patch("/v1/projects/default", json={"name": "other"}), 409, "renamed")
    assert api.patch("/v1/projects/default", json={"description": "ours"}).status_code == 200
    _problem(api.delete(f"/v1/projects/{DEFAULT_PROJECT_ID}"), 409, "cannot be deleted")
    assert api.delete("/v1/projects/b").status_code == 204
    _problem(api.get("/v1/projects/b"), 404)
    _problem(api.delete("/v1/projects/b"), 404)


def test_shared_segments_exist_are_not_the_projects_own_and_drop_out_when_deleted(
    api: TestClient,
) -> None:
    db = _db(api)
    acme = make_project(db, "acme")
    # rows written straight (the supervisor is not the point): one of default's, one of acme's
    with db.unit_of_work() as session:
        session.add(Bridge(name="brshared", ifname="brshared"))
        session.add(Bridge(name="brown", ifname="brown", project_id=acme))
    share = {"resource": "bridge", "id": "brshared"}
    r = api.patch("/v1/projects/acme", json={"shared_segments": [share]})
    assert r.status_code == 200, r.text
    [segment] = r.json()["shared_segments"]
    assert segment["resource"] == "bridge" and segment["name"] == "brshared"
    assert len(segment["id"]) == 36  # stored as the id
    _problem(api.patch("/v1/projects/acme", json={"shared_segments": [share, share]}), 422, "twice")
    own_share = {"resource": "bridge", "id": "brown"}
    _problem(api.patch("/v1/projects/acme", json={"shared_segments": [own_share]}), 422, "own")
    missing = {"resource": "vlan", "id": "brshared"}
    _problem(api.patch("/v1/projects/acme", json={"shared_segments": [missing]}), 422, "no vlan")
    r = api.post("/v1/projects", json={"name": "beta", "shared_segments": [own_share]})
    assert r.status_code == 201 and r.json()["shared_segments"][0]["name"] == "brown"

    with db.unit_of_work() as session:  # its delete accepted: the row is being deleted
        session.query(Bridge).filter_by(name="brshared").one().deleted = True
    assert api.get("/v1/projects/acme").json()["shared_segments"] == []
    _problem(
        api.post("/v1/projects", json={"name": "c", "shared_segments": [share]}),
        409,
        "being deleted",
    )
    with db.unit_of_work() as session:  # and gone
        session.delete(session.query(Bridge).filter_by(name="brshared").one())
    assert api.get("/v1/projects/acme").json()["shared_segments"] == []
    # the project's next change stores only the live ones
    api.patch("/v1/projects/acme", json={"description": "x"})
    with db.reading() as session:
        from app.db.models import Project

        assert session.get(Project, acme).shared_segments == []  # type: ignore[union-attr]


def test_the_secret_is_shown_once_and_the_database_never_holds_it(api: TestClient) -> None:
    acme = api.post("/v1/projects", json={"name": "acme"}).json()["id"]
    r = _token(api, acme, role="member", description="ci")
    assert r.status_code == 201, r.text
    created = r.json()
    secret = created["secret"]
    assert secret.startswith("kvmnetd_") and created["state"] == "active"
    assert created["expires_at"] is None and created["last_used_at"] is None
    listed = api.get(f"/v1/projects/{acme}/tokens").json()["items"]
    one = api.get(f"/v1/projects/{acme}/tokens/{created['id']}").json()
    assert listed == [one] and one == {k: v for k, v in created.items() if k != "secret"}
    assert secret not in str(listed) + str(one)
    assert api.get("/v1/taps", headers=auth(secret)).status_code == 200

    db = _db(api)
    raw = db.engine.raw_connection()
    try:
        dump = "\n".join(raw.driver_connection.iterdump())  # type: ignore[union-attr]
    finally:
        raw.close()
    assert secret_hash(secret) in dump
    assert secret not in dump and secret.removeprefix("kvmnetd_") not in dump
    files = list(Path(db.url.removeprefix("sqlite:///")).parent.glob("kvmnetd.db*"))
    assert files  # the file itself, its WAL and shared memory: the bytes as they are on disk
    assert all(secret.removeprefix("kvmnetd_").encode() not in f.read_bytes() for f in files)


def test_revocation_takes_effect_on_the_very_next_request(api: TestClient) -> None:
    acme = make_project(_db(api), "acme")
    created = _token(api, acme, role="member").json()
    member = auth(created["secret"])
    other = _token(api, acme, role="reader").json()
    assert api.get("/v1/taps", headers=member).status_code == 200
    path = f"/v1/projects/{acme}/tokens/{created['id']}"
    # a member revokes its project's tokens; an admin any
    assert (
        api.delete(f"/v1/projects/{acme}/tokens/{other['id']}", headers=member).status_code == 200
    )
    r = api.delete(path)
    assert r.status_code == 200 and r.json()["state"] == "revoked" and r.json()["revoked_at"]
    _problem(api.get("/v1/taps", headers=member), 401)
    _problem(api.get("/v1/auth/token", headers=member), 401)
    # the row stays; revoking again changes nothing
    again = api.delete(path)
    assert again.status_code == 200 and again.json()["revoked_at"] == r.json()["revoked_at"]
    states = {t["id"]: t["state"] for t in api.get(f"/v1/projects/{acme}/tokens").json()["items"]}
    assert states == {created["id"]: "revoked", other["id"]: "revoked"}
    _problem(api.delete(f"/v1/projects/{acme}/tokens/{DEFAULT_PROJECT_ID}"), 404)


def test_expiry(api: TestClient) -> None:
    acme = make_project(_db(api), "acme")
    now = dt.datetime.now(dt.UTC)
    past = (now - dt.timedelta(seconds=1)).isoformat()
    for body, word in [
        ({"role": "member", "expires_at": past}, "not in the future"),
        ({"role": "member", "expires_at": "2099-01-01T00:00:00Z"}, "ten years"),
        ({"role": "member", "expires_at": "2030-01-01T00:00:00"}, "RFC 3339"),
        ({"role": "member", "expires_at": "2030-01-01"}, "RFC 3339"),
        ({"role": "member", "expires_at": 1900000000}, "RFC 3339"),
        ({"role": "member", "expires_in_s": 0}, "expires_in_s"),
        ({"role": "member", "expires_in_s": "60"}, "expires_in_s"),
        ({"role": "member", "expires_in_s": 60, "expires_at": "2030-01-01T00:00:00Z"}, "not both"),
        ({"role": "owner"}, "role"),
        ({"role": None}, "role"),
        ({}, "role"),
        ({"role": "member", "secret": "mine"}, "secret"),
    ]:
        _problem(_token(api, acme, **body), 422, word)
    assert api.get(f"/v1/projects/{acme}/tokens").json()["items"] == []

    at = (now + dt.timedelta(hours=1)).replace(microsecond=0)
    fixed = _token(api, acme, role="reader", expires_at=at.isoformat().replace("+00:00", "Z"))
    assert fixed.status_code == 201 and dt.datetime.fromisoformat(fixed.json()["expires_at"]) == at
    short = _token(api, acme, role="member", expires_in_s=60).json()
    assert api.get("/v1/taps", headers=auth(short["secret"])).status_code == 200
    expires = dt.datetime.fromisoformat(short["expires_at"])
    _set_clock(api, expires - dt.timedelta(microseconds=1))
    assert api.get("/v1/taps", headers=auth(short["secret"])).status_code == 200
    _set_clock(api, expires)  # expired at expires_at itself
    _problem(api.get("/v1/taps", headers=auth(short["secret"])), 401)
    assert api.get("/v1/taps", headers=auth(fixed.json()["secret"])).status_code == 200
    states = {t["id"]: t["state"] for t in api.get(f"/v1/projects/{acme}/tokens").json()["items"]}
    assert states == {short["id"]: "expired", fixed.json()["id"]: "active"}


def test_last_used_at_is_recorded_at_most_once_a_minute(api: TestClient) -> None:
    acme = make_project(_db(api), "acme")
    created = _token(api, acme, role="member").json()
    path = f"/v1/projects/{acme}/tokens/{created['id']}"
    assert api.get(path).json()["last_used_at"] is None
    now = dt.datetime.now(dt.UTC)
    _set_clock(api, now)
    assert api.get("/v1/taps", headers=auth(created["secret"])).status_code == 200
    _wait_last_use(api)
    assert dt.datetime.fromisoformat(api.get(path).json()["last_used_at"]) == now
    _set_clock(api, now + dt.timedelta(seconds=59))
    assert api.get("/v1/taps", headers=auth(created["secret"])).status_code == 200
    _wait_last_use(api)
    assert dt.datetime.fromisoformat(api.get(path).json()["last_used_at"]) == now  # throttled
    later = now + dt.timedelta(seconds=61)
    _set_clock(api, later)
    assert api.get("/v1/taps", headers=auth(created["secret"])).status_code == 200
    _wait_last_use(api)
    assert dt.datetime.fromisoformat(api.get(path).json()["last_used_at"]) == later


def test_role_rules_on_projects_and_tokens(api: TestClient) -> None:
    db = _db(api)
    acme, beta = make_project(db, "acme"), make_project(db, "beta")
    member, reader = auth(make_token(db, acme, "member")), auth(make_token(db, acme, "reader"))
    admin_elsewhere = auth(make_token(db, beta, "admin"))

    # projects: only an admin changes them; others see only their own
    assert [p["name"] for p in api.get("/v1/projects", headers=member).json()["items"]] == ["acme"]
    assert [p["name"] for p in api.get("/v1/projects", headers=reader).json()["items"]] == ["acme"]
    assert api.get("/v1/projects/acme", headers=reader).status_code == 200
    _problem(api.get("/v1/projects/beta", headers=member), 404)
    _problem(api.get(f"/v1/projects/{DEFAULT_PROJECT_ID}", headers=member), 404)
    _problem(api.post("/v1/projects", json={"name": "c"}, headers=member), 403, "admin")
    _problem(api.patch("/v1/projects/acme", json={"quotas": {"vms": 99}}, headers=member), 403)
    _problem(api.patch("/v1/projects/beta", json={}, headers=member), 404)
    _problem(api.delete("/v1/projects/acme", headers=member), 403)
    _problem(api.delete("/v1/projects/beta", headers=member), 404)
    _problem(api.post("/v1/projects", json={"name": "c"}, headers=reader), 403, "reader")
    assert len(api.get("/v1/projects", headers=admin_elsewhere).json()["items"]) == 3
    assert api.post("/v1/projects", json={"name": "c"}, headers=admin_elsewhere).status_code == 201

    # tokens: a member makes member and reader tokens of its own project, not admin ones
    assert _token(api, acme, member, role="member").status_code == 201
    made = _token(api, "acme", member, role="reader")
    assert made.status_code == 201
    _problem(_token(api, acme, member, role="admin"), 403, "only an admin")
    _problem(_token(api, beta, member, role="reader"), 404)
    _problem(_token(api, acme, reader, role="reader"), 403)
    assert api.get(f"/v1/projects/{acme}/tokens", headers=member).status_code == 200
    _problem(api.get(f"/v1/projects/{acme}/tokens", headers=reader), 403)
    _problem(api.get(f"/v1/projects/{beta}/tokens", headers=member), 404)
    token_path = f"/v1/projects/{acme}/tokens/{made.json()['id']}"
    _problem(api.get(token_path, headers=reader), 403)
    _problem(api.delete(token_path, headers=reader), 403)
    beta_token = _token(api, beta, role="member").json()["id"]
    _problem(api.delete(f"/v1/projects/{beta}/tokens/{beta_token}", headers=member), 404)
    _problem(api.delete(f"/v1/projects/{acme}/tokens/{beta_token}", headers=member), 404)
    assert api.delete(token_path, headers=member).status_code == 200
    # an admin token of any project makes admin tokens anywhere
    assert _token(api, acme, admin_elsewhere, role="admin").status_code == 201

    # who am I
    me = api.get("/v1/auth/token", headers=reader).json()
    assert (me["project"], me["role"], me["via"], me["expires_at"]) == (
        "acme",
        "reader",
        "token",
        None,
    )
    assert api.get("/v1/auth/token").json() == {
        "project_id": DEFAULT_PROJECT_ID,
        "project": "default",
        "role": "admin",
        "via": "unix-socket",
        "token_id": None,
        "expires_at": None,
    }


def test_a_project_holding_resources_is_not_deleted_and_its_tokens_go_with_it(
    api: TestClient,
) -> None:
    db = _db(api)
    acme = make_project(db, "acme")
    secret = make_token(db, acme, "member")
    with db.unit_of_work() as session:  # a resource of acme's (the supervisor is not the point)
        tap = Tap(name="t1", ifname="t1", project_id=acme)
        session.add(tap)
        session.flush()
        tap_id = tap.id
    body = _problem(api.delete("/v1/projects/acme"), 409, "in-use", "tap t1", "no ?force")
    assert body["dependents"] == [{"kind": "tap", "id": tap_id, "name": "t1"}]
    _problem(api.delete("/v1/projects/acme?force=true"), 422, "force")
    assert api.get("/v1/taps", headers=auth(secret)).status_code == 200  # nothing changed
    with db.unit_of_work() as session:
        tap = session.get(Tap, tap_id)
        assert tap is not None
        tap.project_id = DEFAULT_PROJECT_ID
    assert api.delete("/v1/projects/acme").status_code == 204
    _problem(api.get("/v1/taps", headers=auth(secret)), 401)
    with db.reading() as session:
        assert session.query(ApiToken).filter_by(project_id=acme).count() == 0


def test_recording_the_last_use_never_holds_up_the_request(api: TestClient) -> None:
    """While another writer holds the database's write lock, a token's request is answered
    at once; its last use is written once the lock is free."""
    db = _db(api)
    acme = make_project(db, "acme")
    created = _token(api, acme, role="reader").json()
    answers: list[int] = []

    def read() -> None:
        answers.append(api.get("/v1/taps", headers=auth(created["secret"])).status_code)

    with db._write_lock:  # a long write elsewhere (the supervisor's, another request's)
        reader = threading.Thread(target=read)
        reader.start()
        reader.join(timeout=10)
        assert answers == [200]
    _wait_last_use(api)
    path = f"/v1/projects/{acme}/tokens/{created['id']}"
    assert api.get(path).json()["last_used_at"] is not None


def test_a_project_row_written_by_hand_is_still_shown_and_changed(api: TestClient) -> None:
    """Inside the JSON columns (object, array: the CHECK constraints) anything may have been
    written by hand; what is usable is shown, a change rewrites the row clean."""
    make_project(
        _db(api),
        "odd",
        quotas={"vms": "x", "taps": 3, "cpus": 1, "networks": -1},
        vlan_ranges=[[5, "a"], [10, 20], [30], "x"],
        shared_segments=[{"resource": "vm", "id": "x"}, "y", {"id": 1}],
    )
    r = api.get("/v1/projects/odd")
    assert r.status_code == 200, r.text
    assert r.json()["quotas"] == {q: None for q in QUOTAS} | {"taps": 3}
    assert (r.json()["vlan_ranges"], r.json()["shared_segments"]) == ([[10, 20]], [])
    r = api.patch("/v1/projects/odd", json={"quotas": {"vms": 1}})
    assert r.status_code == 200, r.text
    assert r.json()["quotas"] == {q: None for q in QUOTAS} | {"taps": 3, "vms": 1}
    assert api.delete("/v1/projects/odd").status_code == 204
