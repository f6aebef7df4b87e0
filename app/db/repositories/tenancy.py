"""Projects and their tokens: lookups by id, name and secret hash."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.models import ApiToken, Project
from app.db.repositories.base import Repository


class ProjectRepository(Repository[Project]):
    def __init__(self, session: Session) -> None:
        super().__init__(session, Project)

    def get_by_name(self, name: str) -> Project | None:
        """Project names are unique without regard to case (found in any case)."""
        query = select(Project).where(func.lower(Project.name) == name.lower())
        return self.session.scalars(query).first()


class ApiTokenRepository(Repository[ApiToken]):
    def __init__(self, session: Session) -> None:
        super().__init__(session, ApiToken)

    def by_secret_hash(self, secret_hash: str) -> ApiToken | None:
        query = select(ApiToken).where(ApiToken.secret_hash == secret_hash)
        return self.session.scalars(query).first()
