"""Who a bearer token is: a project token's principal, or nobody (revoked, expired, or
unknown). Only the secret's hash is looked up; the secret itself is never stored."""

from __future__ import annotations

import datetime as dt

from app.db.repositories import ApiTokenRepository
from app.db.session import Session
from app.domain.tenancy import Principal, Role, Via, secret_hash


def authenticate(session: Session, secret: bytes, now: dt.datetime) -> Principal | None:
    """The principal of the project token whose secret is `secret`; None when no live token
    has it (never issued, revoked, or expired at `now`)."""
    token = ApiTokenRepository(session).by_secret_hash(secret_hash(secret))
    if token is None or token.revoked_at is not None:
        return None
    if token.expires_at is not None and token.expires_at <= now:
        return None
    return Principal(token.project_id, Role(token.role), Via.TOKEN, token.id)
