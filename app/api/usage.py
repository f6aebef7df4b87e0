"""GET /v1/projects/{project_id}/usage: a project's usage against each of its quotas.

Its own router (prefix /v1/projects), so it mounts next to the projects API. An admin may
ask about any project; a member or reader only about their own (another is 404).
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.deps import context, principal_of
from app.api.strict import StrictRoute
from app.db.session import Session
from app.schemas.common import PROBLEM_RESPONSES
from app.schemas.usage import ProjectUsage, QuotaUsage, QuotaUsages
from app.services.quotas import project_usage

router = APIRouter(
    prefix="/v1/projects", tags=["projects"], responses=PROBLEM_RESPONSES, route_class=StrictRoute
)


@router.get("/{project_id}/usage", operation_id="get_project_usage", response_model=ProjectUsage)
async def get_project_usage(project_id: str, request: Request) -> ProjectUsage:
    """Every quota of the project (by id or name) with its limit (null: unlimited) and
    usage. 404 for an unknown project, and for another project than the token's own
    unless the caller is an admin. 409 when a stored limit cannot be read."""
    principal = principal_of(request)

    def usage(session: Session) -> ProjectUsage:
        project, uses = project_usage(session, project_id, principal)
        quotas = {u.quota.value: QuotaUsage(limit=u.limit, usage=u.usage) for u in uses}
        return ProjectUsage(
            project_id=project.id, name=project.name, quotas=QuotaUsages.model_validate(quotas)
        )

    return await context(request).read(usage)
