"""Projects and tokens on the real daemon over TCP, as a curl user does it: the admin (the
first-start token file) creates a project and a member token, the token works, is revoked,
and is refused (401) on the very next request."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.host.netns import call_in as in_netns
from tests.e2e.helpers import E2EDaemon

LISTEN = "127.0.0.1:8080"  # inside the test's namespace


@pytest.fixture
def daemon(netns: str, tmp_path: Path) -> Iterator[E2EDaemon]:
    """The daemon with its TCP listener (inside the test's namespace)."""
    daemon = E2EDaemon(netns, tmp_path)
    daemon.extra_env = {"KVMNETD_LISTEN": LISTEN}
    try:
        yield daemon.start()
    finally:
        daemon.kill()


def _session(admin: str) -> dict[str, Any]:
    """Every call over TCP, in the order a user makes them; the answers."""
    seen: dict[str, Any] = {}
    with httpx.Client(base_url=f"http://{LISTEN}", timeout=30) as http:
        as_admin = {"Authorization": f"Bearer {admin}"}
        seen["whoami_admin"] = http.get("/v1/auth/token", headers=as_admin).json()
        project = http.post("/v1/projects", json={"name": "acme"}, headers=as_admin)
        seen["project"] = project.status_code
        token = http.post(
            f"/v1/projects/{project.json()['id']}/tokens",
            json={"role": "member", "description": "ci", "expires_in_s": 3600},
            headers=as_admin,
        )
        seen["token"] = token.status_code
        created = token.json()
        as_member = {"Authorization": f"Bearer {created['secret']}"}
        seen["whoami_member"] = http.get("/v1/auth/token", headers=as_member).json()
        seen["member_reads"] = http.get("/v1/bridges", headers=as_member).status_code
        seen["member_sees"] = [
            p["name"] for p in http.get("/v1/projects", headers=as_member).json()["items"]
        ]
        path = f"/v1/projects/acme/tokens/{created['id']}"
        seen["revoke"] = http.delete(path, headers=as_admin).json()["state"]
        seen["after_revoke"] = http.get("/v1/bridges", headers=as_member).status_code
        seen["x_auth_token"] = http.get(
            "/v1/bridges", headers={"X-Auth-Token": created["secret"]}
        ).status_code
        # last_used_at is written after the request, off its path: give the writer a moment
        deadline = time.monotonic() + 10
        while True:
            seen["listed"] = http.get(path, headers=as_admin).json()
            if seen["listed"]["last_used_at"] is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        seen["secret"] = created["secret"]
    return seen


def test_admin_makes_a_project_and_member_token_that_works_until_revoked(
    netns: str, daemon: E2EDaemon
) -> None:
    admin = daemon.state_dir.joinpath("admin-token").read_text().strip()
    seen = in_netns(netns, lambda: _session(admin))
    assert seen["whoami_admin"]["via"] == "admin-token" and seen["whoami_admin"]["role"] == "admin"
    assert (seen["project"], seen["token"]) == (201, 201)
    member = seen["whoami_member"]
    assert (member["project"], member["role"], member["via"]) == ("acme", "member", "token")
    assert member["expires_at"] is not None
    assert (seen["member_reads"], seen["member_sees"]) == (200, ["acme"])
    assert seen["revoke"] == "revoked"
    assert (seen["after_revoke"], seen["x_auth_token"]) == (401, 401)
    assert seen["listed"]["state"] == "revoked" and "secret" not in seen["listed"]
    assert seen["listed"]["last_used_at"] is not None  # written after its first use
    files = list(daemon.state_dir.glob("kvmnetd.db*"))  # the database, its WAL too
    assert files and all(seen["secret"].encode() not in f.read_bytes() for f in files)
