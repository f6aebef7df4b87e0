"""Projects and tokens for tests, written straight into the database (no API needed):
`make_project` and `make_token`, and `auth` to send a token's secret."""

from __future__ import annotations

import datetime as dt
from typing import Any

from app.db.models import ApiToken, Project
from app.db.session import Database
from app.domain.tenancy import Role, new_secret, secret_hash


def make_project(db: Database, name: str, **fields: Any) -> str:
    """A project called `name` (quotas, vlan_ranges, shared_segments, description as
    keyword arguments); its id."""
    with db.unit_of_work() as session:
        project = Project(name=name, **fields)
        session.add(project)
        session.flush()
        return project.id


def make_token(
    db: Database, project_id: str, role: Role | str, expires_at: dt.datetime | None = None
) -> str:
    """A live token of that project and role; its secret (the database keeps the hash)."""
    secret = new_secret()
    with db.unit_of_work() as session:
        session.add(
            ApiToken(
                project_id=project_id,
                role=Role(role).value,
                secret_hash=secret_hash(secret),
                expires_at=expires_at,
            )
        )
    return secret


def auth(secret: str) -> dict[str, str]:
    """Headers that present `secret` (honoured over TCP and over the unix socket alike)."""
    return {"Authorization": f"Bearer {secret}"}
