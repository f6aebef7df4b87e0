"""Findings of trying projects and tokens as a new user, from the README alone (issue 11,
trial11): one test per finding, each failing on the code before its fix.

Those the lead still has to fix are `xfail(strict=True)` with the finding as the reason: they
fail today (so the branch stays green) and turn into an XPASS failure the moment the fix
lands, when the marker goes. Two projects, `alpha` and `beta`, each with a member token,
share the host; another project's resources must be 404 for a member and never named, not
even in a 409's `detail` or `holder` (README "Projects: what a token sees")."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi.testclient import TestClient

from app.db.session import Database
from app.settings import Settings
from tests.tenancy import auth, make_project, make_token

PROBLEM = "application/problem+json"


def _db(api: TestClient) -> Database:
    db: Database = api.app.state.context.db  # type: ignore[attr-defined]
    return db


def _tenants(api: TestClient, **alpha_fields: Any) -> tuple[dict[str, str], dict[str, str]]:
    """Member tokens' headers of two projects, alpha (with `alpha_fields`) and beta."""
    db = _db(api)
    alpha = make_project(db, "alpha", **alpha_fields)
    beta = make_project(db, "beta")
    return auth(make_token(db, alpha, "member")), auth(make_token(db, beta, "member"))


def _made(r: Any) -> dict[str, Any]:
    assert r.status_code in (200, 201, 202), r.text
    body: dict[str, Any] = r.json()
    return body


def _conflict_naming_nothing_of(r: Any, *secrets: str) -> dict[str, Any]:
    """A 409 problem that names none of `secrets` (another project's names, ids, links)."""
    assert r.status_code == 409, r.text
    assert r.headers["content-type"].startswith(PROBLEM), r.headers
    for secret in secrets:
        assert secret not in r.text, (secret, r.text)
    body: dict[str, Any] = r.json()
    return body


def _project_of(api: TestClient, who: dict[str, str]) -> str:
    project: str = api.get("/v1/auth/token", headers=who).json()["project_id"]
    return project


def _bridge_and_network(api: TestClient, who: dict[str, str], subnet: str) -> dict[str, Any]:
    bridge = _made(api.post("/v1/bridges", json={"name": "br0"}, headers=who))
    body = {"name": "net", "bridge": "br0", "subnet": subnet, "nat": {"enabled": True}}
    network = _made(api.post("/v1/networks", json=body, headers=who))
    return {"bridge": bridge, "network": network}


# ---- fixed here -------------------------------------------------------------------------------


def test_token_expires_at_null_means_it_never_expires(api: TestClient) -> None:
    """POST /v1/projects/{id}/tokens {"role": "reader", "expires_at": null} was a 422 saying
    "expires_at must be an RFC 3339 date-time with an offset", while the OpenAPI schema
    admits null, `expires_in_s: null` is accepted, and the README's rule is that null means
    what leaving the field out means (never expires)."""
    acme = make_project(_db(api), "acme")
    r = api.post(f"/v1/projects/{acme}/tokens", json={"role": "reader", "expires_at": None})
    assert r.status_code == 201, r.text
    assert r.json()["expires_at"] is None and r.json()["state"] == "active"
    # null next to the other one is not "both"
    body = {"role": "reader", "expires_at": None, "expires_in_s": 60}
    r = api.post(f"/v1/projects/{acme}/tokens", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["expires_at"] is not None
    # a real value is still checked
    body = {"role": "reader", "expires_at": "2020-01-01T00:00:00Z"}
    r = api.post(f"/v1/projects/{acme}/tokens", json=body)
    assert r.status_code == 422 and "not in the future" in r.text, r.text


def test_an_expiring_token_makes_no_token_that_outlives_it(api: TestClient) -> None:
    """A member token expiring in 60 s made a member token that never expires (201,
    `expires_at: null`), so a short-lived credential could outlive itself forever. Now the
    tokens it makes expire no later than it (403 otherwise, nothing stored)."""
    db = _db(api)
    acme = make_project(db, "acme")
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10)
    maker = auth(make_token(db, acme, "member", expires_at=soon))
    url = f"/v1/projects/{acme}/tokens"
    before = [t["id"] for t in api.get(url).json()["items"]]
    for body in (
        {"role": "reader"},
        {"role": "member", "expires_in_s": 3600},
        {"role": "reader", "expires_at": (soon + dt.timedelta(seconds=1)).isoformat()},
    ):
        r = api.post(url, json=body, headers=maker)
        assert r.status_code == 403, (body, r.text)
        assert r.headers["content-type"].startswith(PROBLEM) and "expire" in r.json()["detail"]
    assert [t["id"] for t in api.get(url).json()["items"]] == before  # nothing made
    r = api.post(url, json={"role": "reader", "expires_in_s": 60}, headers=maker)
    assert r.status_code == 201, r.text
    # a token without expiry, the unix socket and the admin token are not limited
    forever = auth(make_token(db, acme, "member"))
    assert api.post(url, json={"role": "reader"}, headers=forever).status_code == 201
    assert api.post(url, json={"role": "reader"}).status_code == 201


# ---- left for the lead ------------------------------------------------------------------------


def test_a_subnet_overlapping_another_projects_network_does_not_name_it(api: TestClient) -> None:
    alpha, beta = _tenants(api)
    _bridge_and_network(api, alpha, "10.50.0.0/24")
    api.patch("/v1/networks/net", json={"domain": "secret-alpha.example"}, headers=alpha)
    _made(api.post("/v1/bridges", json={"name": "br0"}, headers=beta))
    body = {"name": "other", "bridge": "br0", "subnet": "10.50.0.0/24"}
    r = api.post("/v1/networks", json=body, headers=beta)
    problem = _conflict_naming_nothing_of(r, "'net'", "secret-alpha")
    assert "overlaps 10.50.0.0/24 of a network of another project" in problem["detail"]
    assert api.get("/v1/networks", headers=beta).json()["items"] == []
    # alpha's own second network, and the admin, are told which
    _made(api.post("/v1/bridges", json={"name": "br1"}, headers=alpha))
    r = api.post("/v1/networks", json=body | {"name": "n2", "bridge": "br1"}, headers=alpha)
    assert r.status_code == 409 and "of network 'net'" in r.text, r.text
    r = api.post("/v1/networks", json=body | {"project_id": _project_of(api, beta)})
    assert r.status_code == 409 and "of network 'net'" in r.text, r.text


def test_a_link_address_clashing_with_another_projects_does_not_name_it(api: TestClient) -> None:
    alpha, beta = _tenants(api)
    made = _bridge_and_network(api, alpha, "10.50.0.0/24")
    body = {"name": "addr", "addresses": ["10.70.0.1/24"]}
    tap = _made(api.post("/v1/taps", json=body, headers=alpha))
    secrets = ("'net'", made["bridge"]["ifname"], "'addr'", tap["ifname"])
    # in alpha's subnet, on another link
    r = api.post("/v1/bridges", json={"name": "b1", "addresses": ["10.50.0.5/24"]}, headers=beta)
    problem = _conflict_naming_nothing_of(r, *secrets, "10.50.0.1")
    assert "of a network of another project" in problem["detail"], problem
    hidden = {"name": "(another project's)", "link": None, "ip": None}
    assert problem["holder"] == {"kind": "network"} | hidden, problem
    # alpha's tap's own address
    r = api.post("/v1/bridges", json={"name": "b2", "addresses": ["10.70.0.1/24"]}, headers=beta)
    problem = _conflict_naming_nothing_of(r, *secrets)
    assert problem["holder"] == {"kind": "tap"} | hidden, problem
    # and in a PATCH, on a tap
    _made(api.post("/v1/taps", json={"name": "t"}, headers=beta))
    r = api.patch("/v1/taps/t", json={"addresses": ["10.70.0.1/24"]}, headers=beta)
    _conflict_naming_nothing_of(r, *secrets)
    assert [b["name"] for b in api.get("/v1/bridges", headers=beta).json()["items"]] == []
    # alpha itself, and the admin, are told whose
    r = api.post("/v1/bridges", json={"name": "b3", "addresses": ["10.70.0.1/24"]}, headers=alpha)
    assert r.status_code == 409 and "tap 'addr'" in r.text, r.text
    body = {"name": "b4", "addresses": ["10.70.0.1/24"], "project_id": _project_of(api, beta)}
    r = api.post("/v1/bridges", json=body)
    assert r.status_code == 409 and "tap 'addr'" in r.text, r.text


def test_a_subnet_holding_another_projects_link_address_does_not_name_it(
    api: TestClient,
) -> None:
    alpha, beta = _tenants(api)
    bridge = _made(
        api.post("/v1/bridges", json={"name": "lk3", "addresses": ["10.70.0.2/24"]}, headers=alpha)
    )
    _made(api.post("/v1/bridges", json={"name": "br0"}, headers=beta))
    body = {"name": "n", "bridge": "br0", "subnet": "10.70.0.0/24"}
    r = api.post("/v1/networks", json=body, headers=beta)
    problem = _conflict_naming_nothing_of(r, "'lk3'", bridge["ifname"], "10.70.0.2")
    assert "contains an address of a bridge of another project" in problem["detail"], problem
    assert api.get("/v1/networks", headers=beta).json()["items"] == []


def test_a_host_port_clash_with_another_projects_forward_does_not_name_it(
    api: TestClient, settings: Settings
) -> None:
    alpha, beta = _tenants(api)
    images = settings.images_dir
    images.mkdir(parents=True, exist_ok=True)  # a member's boot files lie there
    kernel = images / "vmlinuz"
    kernel.write_bytes(b"")
    for who, subnet in ((alpha, "10.50.0.0/24"), (beta, "10.51.0.0/24")):
        _bridge_and_network(api, who, subnet)
        vm = {
            "name": "web",
            "power_state": "stopped",
            "boot": {"kernel": str(kernel)},
            "nics": [{"backend": "bridge", "bridge": "br0"}],
        }
        _made(api.post("/v1/vms", json=vm, headers=who))
    forward = {"network": "net", "vm": "web", "protocol": "tcp", "port": 8080, "target_port": 80}
    theirs = _made(api.post("/v1/port-forwards", json=forward, headers=alpha))
    r = api.post("/v1/port-forwards", json=forward, headers=beta)
    problem = _conflict_naming_nothing_of(r, theirs["id"], theirs["name"])
    assert "a port forward of another project" in problem["detail"], problem
    batch = {"port_forwards": [forward | {"port": 8081}, forward]}
    r = api.post("/v1/port-forwards/batch", json=batch, headers=beta)
    _conflict_naming_nothing_of(r, theirs["id"], theirs["name"])
    # a VM's user-networking forward on that port, and the other way round
    user_vm = {
        "name": "u",
        "power_state": "stopped",
        "boot": {"kernel": str(kernel)},
        "nics": [
            {
                "backend": "user",
                "user": {
                    "restrict": True,  # a member's user NIC (tenant restrictions)
                    "forwards": [{"protocol": "tcp", "host_port": 8080, "guest_port": 22}],
                },
            }
        ],
    }
    r = api.post("/v1/vms", json=user_vm, headers=beta)
    _conflict_naming_nothing_of(r, theirs["id"], theirs["name"])
    mine = user_vm | {
        "nics": [
            user_vm["nics"][0]
            | {
                "user": {
                    "restrict": True,
                    "forwards": [{"protocol": "tcp", "host_port": 9090, "guest_port": 22}],
                }
            }
        ]
    }
    _made(api.post("/v1/vms", json=mine, headers=alpha))
    r = api.post("/v1/port-forwards", json=forward | {"port": 9090}, headers=beta)
    problem = _conflict_naming_nothing_of(r, "'u'")
    assert "another project's VM" in problem["detail"], problem
    # the admin still sees whose it is
    r = api.post("/v1/port-forwards", json=forward | {"project_id": _project_of(api, beta)})
    assert theirs["name"] in r.json()["detail"], r.text


def test_a_port_of_another_projects_tap_shows_no_tap_id(api: TestClient) -> None:
    db = _db(api)
    beta = make_project(db, "beta")
    beta_member = auth(make_token(db, beta, "member"))
    bridge = _made(api.post("/v1/bridges?wait=10", json={"name": "br0"}, headers=beta_member))
    share = [{"resource": "bridge", "id": bridge["id"]}]
    alpha = make_project(db, "alpha")
    _made(api.patch(f"/v1/projects/{alpha}", json={"shared_segments": share}))
    alpha_member = auth(make_token(db, alpha, "member"))
    body = {"name": "onb", "bridge": bridge["id"]}
    tap = _made(api.post("/v1/taps?wait=10", json=body, headers=alpha_member))
    assert tap["status"] == "active", tap
    ports = api.get("/v1/bridges/br0", headers=beta_member).json()["ports"]
    assert ports, "alpha's tap is a port of beta's bridge"
    assert tap["id"] not in str(ports), ports


def test_two_authorization_headers_that_disagree_are_refused(api: TestClient) -> None:
    alpha, beta = _tenants(api)
    headers = [("Authorization", alpha["Authorization"]), ("Authorization", beta["Authorization"])]
    r = api.get("/v1/auth/token", headers=headers)
    assert r.status_code in (400, 401), r.text
    assert r.headers["content-type"].startswith(PROBLEM)


def test_x_auth_token_disagreeing_with_authorization_is_refused(api: TestClient) -> None:
    alpha, beta = _tenants(api)
    secret = alpha["Authorization"].removeprefix("Bearer ")
    r = api.get("/v1/auth/token", headers={"X-Auth-Token": secret} | beta)
    assert r.status_code in (400, 401), r.text
    assert r.headers["content-type"].startswith(PROBLEM)


def test_a_bearer_token_with_trailing_spaces_is_the_token(api: TestClient) -> None:
    alpha, _ = _tenants(api)
    r = api.get("/v1/auth/token", headers={"Authorization": alpha["Authorization"] + "  "})
    assert r.status_code == 200, r.text
    assert r.json()["project"] == "alpha"


def test_project_and_token_changes_are_recorded_as_operations(api: TestClient) -> None:
    project = _made(api.post("/v1/projects", json={"name": "acme"}))
    token = _made(api.post(f"/v1/projects/{project['id']}/tokens", json={"role": "reader"}))
    _made(api.delete(f"/v1/projects/{project['id']}/tokens/{token['id']}"))
    resources = {op["resource"] for op in api.get("/v1/operations").json()["items"]}
    assert {"project", "token"} <= resources, resources


def test_a_description_refuses_unicode_line_separators(api: TestClient) -> None:
    """A description is "one line of text", but U+2028 LINE SEPARATOR and U+2029 PARAGRAPH
    SEPARATOR were accepted (only category Cc was refused), in projects, tokens and VLANs."""
    acme = make_project(_db(api), "acme")
    for text in ("a\u2028b", "a\u2029b"):
        r = api.post("/v1/projects", json={"name": "p", "description": text})
        assert r.status_code == 422 and "line separator" in r.text, r.text
        r = api.post(f"/v1/projects/{acme}/tokens", json={"role": "reader", "description": text})
        assert r.status_code == 422, r.text
    assert [p["name"] for p in api.get("/v1/projects").json()["items"]] == ["default", "acme"]
    assert api.post("/v1/projects", json={"name": "p", "description": "ü ☃"}).status_code == 201


def test_unsharing_a_segment_the_project_still_uses_is_refused(api: TestClient) -> None:
    db = _db(api)
    _made(api.post("/v1/bridges?wait=10", json={"name": "shared0"}))
    alpha = make_project(db, "alpha")
    share = [{"resource": "bridge", "id": "shared0"}]
    _made(api.patch(f"/v1/projects/{alpha}", json={"shared_segments": share}))
    member = auth(make_token(db, alpha, "member"))
    tap = _made(api.post("/v1/taps", json={"name": "t", "bridge": "shared0"}, headers=member))
    r = api.patch(f"/v1/projects/{alpha}", json={"shared_segments": []})
    assert r.status_code == 409, r.text
    assert tap["id"] in r.text  # the dependent named, to the admin
    assert len(api.get(f"/v1/projects/{alpha}").json()["shared_segments"]) == 1


def test_an_admin_names_the_project_of_a_create_by_name(api: TestClient) -> None:
    beta = make_project(_db(api), "beta")
    r = api.post("/v1/bridges", json={"name": "br0", "project_id": "beta"})
    assert r.status_code in (201, 202), r.text
    assert r.json()["project_id"] == beta


def test_a_revoked_tokens_event_stream_carries_nothing_more(api: TestClient) -> None:
    db = _db(api)
    acme = make_project(db, "acme")
    reader = make_token(db, acme, "reader")
    token_id = api.get("/v1/auth/token", headers=auth(reader)).json()["token_id"]
    seen: list[str] = []
    with api.stream("GET", "/v1/events", headers=auth(reader)) as stream:
        assert stream.status_code == 200
        revoked = api.delete(f"/v1/projects/{acme}/tokens/{token_id}")
        assert revoked.status_code == 200, revoked.text
        made = api.post("/v1/taps", json={"name": "t", "project_id": acme})
        assert made.status_code == 202, made.text
        for line in stream.iter_lines():  # ends when the stream does (the fix)
            if line.startswith("data: ") and '"tap.' in line:
                seen.append(line)
                break
    assert seen == []


def test_a_member_revokes_no_admin_token(api: TestClient) -> None:
    """trial11: a member could revoke its project's admin-role token, though it may not
    make one; now an admin token is an admin's to make and to revoke."""
    db = _db(api)
    acme = make_project(db, "acme")
    member = auth(make_token(db, acme, "member"))
    admin_token = _made(api.post(f"/v1/projects/{acme}/tokens", json={"role": "admin"}))
    r = api.delete(f"/v1/projects/{acme}/tokens/{admin_token['id']}", headers=member)
    assert r.status_code == 403 and "admin" in r.json()["detail"], r.text
    token = api.get(f"/v1/projects/{acme}/tokens/{admin_token['id']}").json()
    assert token["revoked_at"] is None
    reader = _made(api.post(f"/v1/projects/{acme}/tokens", json={"role": "reader"}))
    r = api.delete(f"/v1/projects/{acme}/tokens/{reader['id']}", headers=member)
    assert r.status_code == 200, r.text
