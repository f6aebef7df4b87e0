"""The projects and tokens API (issue 11 items 1 and 2): CRUD and validation, the secret
shown once and never stored, revocation and expiry at once, last use, role rules, and a
project's delete refused while it holds resources."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.db.models import Tap
from app.domain.tenancy import DEFAULT_PROJECT_ID
from tests.tenancy import auth, make_project, make_token


def _db(api: TestClient) -> Any:
    return api.app.state.context.db  # type: ignore[attr-defined]


def test_smoke(api: TestClient) -> None:
    r = api.post("/v1/projects", json={"name": "acme", "quotas": {"vms": 3}, "vlan_ranges": [[200, 299], [100, 199]]})
    print(r.json())
    assert r.status_code == 201
    r2 = api.post(f"/v1/projects/{r.json()['id']}/tokens", json={"role": "member", "expires_in_s": 60})
    print(r2.json())
    assert r2.status_code == 201
    r3 = api.get("/v1/auth/token", headers=auth(r2.json()["secret"]))
    print(r3.json())
    print(api.get("/v1/auth/token").json())
    api.app.state.last_use.wait()
    print(api.get(f"/v1/projects/acme/tokens").json())
