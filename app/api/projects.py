"""/v1/projects: projects (tenants) and their bearer tokens; /v1/auth/token: who am I.

Rules (app.services.projects): an admin manages every project; anyone else sees only its
own project (another one is 404) and may not change it (403). Tokens: an admin makes and
revokes any; a member makes member and reader tokens of its own project and revokes its
project's tokens; a reader may do neither (403). A token's secret is in its 201 answer only.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, Request, Response
from sqlalchemy.orm import Session

from app.api.deps import Cursor, Limit, context, principal_of, request_id_of
from app.api.strict import StrictRoute
from app.db.models import ApiToken, Project
from app.domain.projects import (
    SharedResource,
    stored_quotas,
    stored_segments,
    stored_vlan_ranges,
    token_state,
)
from app.domain.tenancy import Quota, Role
from app.schemas.common import PROBLEM_RESPONSES
from app.schemas.projects import (
    ProjectCreate,
    ProjectOut,
    ProjectPage,
    ProjectUpdate,
    QuotasOut,
    SharedSegmentOut,
    TokenCreate,
    TokenCreated,
    TokenOut,
    TokenPage,
    Whoami,
)
from app.services.projects import ProjectService, TokenService, whoami

RESPONSES = {**PROBLEM_RESPONSES, 403: {**PROBLEM_RESPONSES[404], "description": "Forbidden"}}
router = APIRouter(tags=["projects"], responses=RESPONSES, route_class=StrictRoute)

PROJECT = "/v1/projects/{project_id}"
PROJECT_REF = "The project's id or name (any case)"
ADMIN_ONLY = "Admin only (403 otherwise; another project is 404)."


def _views(rows: Sequence[Project], service: ProjectService) -> list[ProjectOut]:
    """Shared segments deleted since drop out: only live ones are shown."""
    live = service.shared_names(rows)
    return [
        ProjectOut(
            id=r.id,
            name=r.name,
            description=r.description,
            quotas=QuotasOut(**{q.value: stored_quotas(r.quotas).get(q.value) for q in Quota}),
            vlan_ranges=stored_vlan_ranges(r.vlan_ranges),
            shared_segments=[
                SharedSegmentOut(
                    resource=SharedResource(s["resource"]),
                    id=s["id"],
                    name=live[(s["resource"], s["id"])],
                )
                for s in stored_segments(r.shared_segments)
                if (s["resource"], s["id"]) in live
            ],
            created_at=r.created_at,
            updated_at=r.updated_at,
        )
        for r in rows
    ]


def _view(row: Project, service: ProjectService) -> ProjectOut:
    return _views([row], service)[0]


# ---- projects -------------------------------------------------------------------------------


@router.post(
    "/v1/projects",
    operation_id="create_project",
    status_code=201,
    response_model=ProjectOut,
    summary="Create a project",
    description=f"{ADMIN_ONLY} 409 name-taken when a project has the name in any case.",
)
async def create_project(body: ProjectCreate, request: Request) -> ProjectOut:
    principal = principal_of(request)

    def create(session: Session) -> ProjectOut:
        service = ProjectService(session, principal, request_id_of(request))
        return _view(service.create(body), service)

    return await context(request).mutate(create)


@router.get("/v1/projects", operation_id="list_projects", response_model=ProjectPage)
async def list_projects(request: Request, limit: Limit = 100, cursor: Cursor = None) -> ProjectPage:
    """An admin sees every project; anyone else only its own."""
    principal = principal_of(request)

    def page(session: Session) -> ProjectPage:
        service = ProjectService(session, principal, request_id_of(request))
        rows, next_cursor = service.page(limit, cursor)
        return ProjectPage(items=_views(rows, service), next_cursor=next_cursor)

    return await context(request).read(page)


@router.get(PROJECT, operation_id="get_project", response_model=ProjectOut)
async def get_project(project_id: str, request: Request) -> ProjectOut:
    """By id or name; another project than the caller's own is 404 unless it is an admin."""
    principal = principal_of(request)

    def load(session: Session) -> ProjectOut:
        service = ProjectService(session, principal, request_id_of(request))
        return _view(service.get(project_id), service)

    return await context(request).read(load)


@router.patch(
    PROJECT,
    operation_id="update_project",
    response_model=ProjectOut,
    description=f"{ADMIN_ONLY} The project `default` cannot be renamed (409).",
)
async def update_project(project_id: str, body: ProjectUpdate, request: Request) -> ProjectOut:
    principal = principal_of(request)

    def update(session: Session) -> ProjectOut:
        service = ProjectService(session, principal, request_id_of(request))
        return _view(service.update(project_id, body), service)

    return await context(request).mutate(update)


@router.delete(
    PROJECT,
    operation_id="delete_project",
    status_code=204,
    response_class=Response,
    description=f"{ADMIN_ONLY} 409 `in-use` (listing `dependents`) while the project holds "
    "any resource: delete them first; there is no ?force. Its tokens are deleted with it; "
    "the project `default` cannot be deleted (409).",
)
async def delete_project(project_id: str, request: Request) -> Response:
    principal = principal_of(request)
    await context(request).mutate(
        lambda s: ProjectService(s, principal, request_id_of(request)).delete(project_id)
    )
    return Response(status_code=204)


# ---- tokens ---------------------------------------------------------------------------------


def _tokens(session: Session, request: Request) -> TokenService:
    """The request's token service: its principal, the clock's time now, its request id."""
    ctx = context(request)
    return TokenService(session, principal_of(request), ctx.clock(), request_id_of(request))


def token_out(row: ApiToken, request: Request) -> TokenOut:
    now = context(request).clock()
    return TokenOut(
        id=row.id,
        project_id=row.project_id,
        role=Role(row.role),
        description=row.description,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
        state=token_state(row.expires_at, row.revoked_at, now),
    )


@router.post(
    PROJECT + "/tokens",
    operation_id="create_token",
    status_code=201,
    response_model=TokenCreated,
    summary="Make a bearer token of the project",
    description="The answer holds the token's `secret`, this once (the database keeps its "
    "SHA-256). Admin: any role in any project; member: member or reader tokens of its own "
    "project; reader: 403.",
)
async def create_token(project_id: str, body: TokenCreate, request: Request) -> TokenCreated:
    row, secret = await context(request).mutate(
        lambda s: _tokens(s, request).create(project_id, body)
    )
    return TokenCreated(**token_out(row, request).model_dump(), secret=secret)


@router.get(PROJECT + "/tokens", operation_id="list_tokens", response_model=TokenPage)
async def list_tokens(
    project_id: str, request: Request, limit: Limit = 100, cursor: Cursor = None
) -> TokenPage:
    """The project's tokens, revoked and expired ones too, never their secrets. Admin or a
    member of the project; a reader is 403."""
    rows, next_cursor = await context(request).read(
        lambda s: _tokens(s, request).page(project_id, limit, cursor)
    )
    return TokenPage(items=[token_out(r, request) for r in rows], next_cursor=next_cursor)


@router.get(PROJECT + "/tokens/{token_id}", operation_id="get_token", response_model=TokenOut)
async def get_token(project_id: str, token_id: str, request: Request) -> TokenOut:
    """One token (never its secret). Admin or a member of the project; a reader is 403."""
    row = await context(request).read(lambda s: _tokens(s, request).get(project_id, token_id))
    return token_out(row, request)


@router.delete(
    PROJECT + "/tokens/{token_id}",
    operation_id="revoke_token",
    response_model=TokenOut,
    summary="Revoke a token",
    description="The token stops working from the very next request (401); it stays listed "
    "with `revoked_at` and state `revoked`. Revoking it again changes nothing. Admin, or a "
    "member of the project; a reader is 403.",
)
async def revoke_token(project_id: str, token_id: str, request: Request) -> TokenOut:
    row = await context(request).mutate(lambda s: _tokens(s, request).revoke(project_id, token_id))
    return token_out(row, request)


# ---- who am I -------------------------------------------------------------------------------


@router.get(
    "/v1/auth/token",
    operation_id="get_auth_token",
    response_model=Whoami,
    summary="Who this request acts as",
    description="The caller's project, role, how it authenticated (`via`), and its token's "
    "id and expiry (Keystone's GET /v3/auth/tokens). The unix socket and the first-start "
    "admin token are admins of the `default` project with no token id.",
)
async def get_auth_token(request: Request) -> Whoami:
    principal = principal_of(request)
    fields = await context(request).read(lambda s: whoami(s, principal))
    return Whoami(**fields)
