"""Who a request acts as (app.api.middleware.AuthMiddleware): project tokens by their
secret (Bearer or X-Auth-Token), only while live; readers only read."""

from __future__ import annotations

import datetime as dt

from fastapi.testclient import TestClient
from sqlalchemy import select

from app.db.models import ApiToken
from app.domain.tenancy import secret_hash
from tests.tenancy import auth, make_project, make_token


def test_a_project_token_acts_while_live_and_a_reader_only_reads(api: TestClient) -> None:
    db = api.app.state.context.db  # type: ignore[attr-defined]
    project = make_project(db, "acme")
    reader = make_token(db, project, "reader")
    assert api.get("/v1/taps", headers=auth(reader)).status_code == 200
    assert api.get("/v1/taps", headers={"X-Auth-Token": reader}).status_code == 200
    r = api.post("/v1/taps", json={"name": "t1"}, headers=auth(reader))
    assert r.status_code == 403 and "reader" in r.json()["detail"]
    assert api.get("/v1/taps/t1").status_code == 404  # nothing was made
    assert api.get("/v1/taps", headers=auth(reader + "x")).status_code == 401

    gone = make_token(db, project, "member", expires_at=dt.datetime.now(dt.UTC))
    assert api.get("/v1/taps", headers=auth(gone)).status_code == 401
    revoked = make_token(db, project, "member")
    with db.unit_of_work() as session:
        row = session.scalars(
            select(ApiToken).where(ApiToken.secret_hash == secret_hash(revoked))
        ).one()
        row.revoked_at = dt.datetime.now(dt.UTC)
    assert api.get("/v1/taps", headers=auth(revoked)).status_code == 401


def test_the_database_keeps_no_secret(api: TestClient) -> None:
    db = api.app.state.context.db  # type: ignore[attr-defined]
    secret = make_token(db, make_project(db, "acme"), "member")
    dump = "\n".join(db.engine.raw_connection().driver_connection.iterdump())
    assert secret_hash(secret) in dump
    assert secret not in dump and secret.removeprefix("kvmnetd_") not in dump


def test_every_token_reads_the_capabilities_summary_and_only_admins_the_details(
    api: TestClient,
) -> None:
    """Issue 11: "capabilities beyond a summary are admin-only"."""
    db = api.app.state.context.db  # type: ignore[attr-defined]
    reader = auth(make_token(db, make_project(db, "acme"), "reader"))
    assert api.get("/v1/host/capabilities", headers=reader).status_code == 403
    details = api.get("/v1/host/capabilities").json()
    summary = api.get("/v1/capabilities", headers=reader)
    assert summary.status_code == 200, summary.text
    body = summary.json()
    assert body["features"]["port_isolation"] == details["links"]["port_isolation"]["available"]
    assert body["features"]["vhost_net"] == details["vhost_net"]["available"]
    assert "tcg" in body["accelerators"]
    assert "virtio-net-pci" in body["nic_models"]
    assert "CONFIG_" not in summary.text and "/usr/" not in summary.text  # no provider details
