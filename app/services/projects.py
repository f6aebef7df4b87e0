"""Projects and tokens use cases (issue 11 items 1 and 2): create, change and delete
projects (admin), make, list and revoke a project's tokens, and say who a request is.

Who sees what: an admin every project; anyone else only its own, and another project is 404
(its existence is not revealed, as Neutron does). Who may change what: projects only an
admin; tokens as app.domain.projects.token_action_refusal says (403 otherwise).

A project's delete is refused (409 `in-use`, listing what it holds) while any resource row
has its project_id; there is no ?force (a forced delete would have to delete VMs and networks
of a tenant in one go). Its tokens go with it (ON DELETE CASCADE); its operations stay (the
audit trail keeps the project id).

Shared segments are stored as {"resource", "id"}; one deleted later drops out of every
project's list at once (the view shows only live segments, and the project's next change
stores only those), so no delete elsewhere has to know about projects.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

from app.db.models import ApiToken, Project, new_id
from app.db.repositories import (
    find_project,
    find_segments,
    live_segment_names,
    project_holdings,
    project_named,
    project_page,
    project_token,
    segment_users,
    token_page,
)
from app.db.session import Session
from app.domain.errors import BeingDeleted, Conflict, InUse, InvalidInput, NameTaken, NotFound
from app.domain.projects import (
    Forbidden,
    expiry,
    is_default,
    may_see_project,
    stored_quotas,
    stored_segments,
    token_action_refusal,
    validate_quotas,
)
from app.domain.tenancy import Caller, Principal, Role, new_secret, secret_hash
from app.schemas.projects import ProjectCreate, ProjectUpdate, SharedSegmentIn, TokenCreate
from app.services.operations import record_done

log = logging.getLogger(__name__)


def _who(principal: Principal) -> str:
    """Who did it, for the log (the audit trail of project and token changes)."""
    token = f" token {principal.token_id}" if principal.token_id else ""
    return (
        f"{principal.role.value} of project {principal.project_id} via {principal.via.value}{token}"
    )


def describe_held(held: Sequence[tuple[str, str, str]], limit: int = 10) -> str:
    """`vm web, tap t1` (the first `limit`, then how many more)."""
    shown = ", ".join(f"{kind} {name}" for kind, _, name in held[:limit])
    return shown + (f" and {len(held) - limit} more" if len(held) > limit else "")


def _admin_only(principal: Principal, what: str) -> None:
    if not principal.is_admin:
        raise Forbidden(f"only an admin may {what} (this token's role is {principal.role.value!r})")


class ProjectService:
    """`request_id`: recorded on the operations of its changes (the audit trail)."""

    def __init__(
        self, session: Session, principal: Principal, request_id: str | None = None
    ) -> None:
        self.session = session
        self.principal = principal
        self.caller = Caller(principal, request_id)

    # ---- reading -----------------------------------------------------------------------

    def get(self, ref: str) -> Project:
        """The project `ref` (id or name) names, if the caller may see it; else 404."""
        row = find_project(self.session, ref)
        if row is None or not may_see_project(self.principal, row.id):
            raise NotFound(f"no project {ref!r}")
        return row

    def page(self, limit: int, cursor: str | None) -> tuple[Sequence[Project], str | None]:
        only = None if self.principal.is_admin else self.principal.project_id
        return project_page(self.session, limit, cursor, only)

    def shared_names(self, rows: Sequence[Project]) -> dict[tuple[str, str], str]:
        """(resource, id) -> name of the live shared segments of these projects."""
        wanted = [s for r in rows for s in stored_segments(r.shared_segments)]
        return live_segment_names(self.session, wanted)

    # ---- changing ----------------------------------------------------------------------

    def create(self, body: ProjectCreate) -> Project:
        _admin_only(self.principal, "create projects")
        self._refuse_name_taken(body.name)
        project_id = new_id()
        row = Project(
            id=project_id,
            name=body.name,
            description=body.description,
            quotas=body.quotas.limits() if body.quotas is not None else {},
            vlan_ranges=body.vlan_ranges or [],
            shared_segments=self._segments(project_id, body.shared_segments or []),
        )
        self.session.add(row)
        self.session.flush()
        record_done(self.session, "create", "project", row.id, row.id, self.caller)
        log.info("project %s (%s) created by %s", row.name, row.id, _who(self.principal))
        return row

    def update(self, ref: str, body: ProjectUpdate) -> Project:
        row = self.get(ref)
        _admin_only(self.principal, "change projects")
        changes = body.changes()
        if "name" in changes and changes["name"] != row.name:
            if is_default(row.id):
                raise Conflict("the project 'default' cannot be renamed")
            self._refuse_name_taken(changes["name"], except_id=row.id)
            row.name = changes["name"]
        if "description" in changes:
            row.description = changes["description"]
        if "quotas" in changes:
            row.quotas = self._merged_quotas(row.quotas, changes["quotas"])
        if "vlan_ranges" in changes:
            row.vlan_ranges = changes["vlan_ranges"]
        if "shared_segments" in changes:
            sent = [SharedSegmentIn.model_validate(s) for s in changes["shared_segments"]]
            segments = self._segments(row.id, sent)
            self._refuse_unsharing_used(row, segments)
            row.shared_segments = segments
        else:  # drop the ones deleted since (they drop out of the view already)
            live = self.shared_names([row])
            kept = [
                s for s in stored_segments(row.shared_segments) if (s["resource"], s["id"]) in live
            ]
            if kept != row.shared_segments:
                row.shared_segments = kept
        self.session.flush()
        record_done(self.session, "update", "project", row.id, row.id, self.caller)
        log.info(
            "project %s (%s) changed by %s: %s",
            row.name,
            row.id,
            _who(self.principal),
            ", ".join(sorted(changes)) or "nothing",
        )
        return row

    def delete(self, ref: str) -> None:
        row = self.get(ref)
        _admin_only(self.principal, "delete projects")
        if is_default(row.id):
            raise Conflict("the project 'default' cannot be deleted")
        held = project_holdings(self.session, row.id)
        if held:
            raise InUse(
                f"project {row.name!r} still holds {describe_held(held)}; delete them first "
                "(a project is never deleted with its resources: there is no ?force)",
                dependents=[{"kind": kind, "id": i, "name": name} for kind, i, name in held],
            )
        self.session.delete(row)  # its tokens go with it (api_tokens ON DELETE CASCADE)
        record_done(self.session, "delete", "project", row.id, row.id, self.caller)
        self.session.flush()
        log.info("project %s (%s) deleted by %s", row.name, row.id, _who(self.principal))

    @staticmethod
    def _merged_quotas(current: dict[str, Any], sent: dict[str, Any] | None) -> dict[str, int]:
        if sent is None:
            return {}
        merged = {**stored_quotas(current), **sent}
        return validate_quotas(merged)

    def _refuse_name_taken(self, name: str, except_id: str | None = None) -> None:
        holder = project_named(self.session, name, except_id)
        if holder is not None:
            raise NameTaken(
                f"project {holder.name!r} ({holder.id}) has this name: project names are "
                "unique without regard to case"
            )

    def _refuse_unsharing_used(self, row: Project, kept: list[dict[str, str]]) -> None:
        """409 in-use when a shared segment the change drops still carries the project's
        taps, NICs, networks or VLANs: they would stay on another project's L2 after the
        sharing was withdrawn (Neutron likewise refuses to unshare a network other tenants'
        ports use). The dependents are named: the project is the one they belong to."""
        keep = {(s["resource"], s["id"]) for s in kept}
        for segment in stored_segments(row.shared_segments):
            if (segment["resource"], segment["id"]) in keep:
                continue
            users = segment_users(self.session, row.id, segment["resource"], segment["id"])
            if users:
                raise InUse(
                    f"project {row.name!r} still uses shared {segment['resource']} "
                    f"{segment['id']}: detach or delete its "
                    f"{', '.join(f'{kind} {name!r}' for kind, _, name in users[:5])}"
                    f"{' and more' if len(users) > 5 else ''} first",
                    dependents=[
                        {"kind": kind, "id": user_id, "name": name} for kind, user_id, name in users
                    ],
                )

    def _segments(self, project_id: str, sent: Sequence[SharedSegmentIn]) -> list[dict[str, str]]:
        """Each sent segment as {"resource", "id"}: it must exist, be alive, be named
        unambiguously, not be the project's own, and come once."""
        stored: list[dict[str, str]] = []
        for entry in sent:
            resource = entry.resource.value
            found = find_segments(self.session, resource, entry.id)
            if not found:  # a field of the body names nothing: 422 (404 is for the path)
                raise InvalidInput(f"shared_segments: no {resource} {entry.id!r} to share")
            if len(found) > 1:
                raise Conflict(
                    f"{len(found)} {resource}s of different projects are called {entry.id!r}; "
                    "name the one to share by its id",
                    candidates=[{"id": f.id, "project_id": f.project_id} for f in found],
                )
            segment = found[0]
            if segment.deleted:
                raise BeingDeleted(f"{resource} {segment.name!r} is being deleted")
            if segment.project_id == project_id:
                raise InvalidInput(
                    f"{resource} {segment.name!r} is the project's own: its NICs may attach "
                    "to it anyway; shared segments are other projects'"
                )
            item = {"resource": resource, "id": segment.id}
            if item in stored:
                raise InvalidInput(f"{resource} {segment.name!r} is listed twice")
            stored.append(item)
        return stored


class TokenService:
    """A project's tokens. `now`: the clock's time for this request (expiry, state)."""

    def __init__(
        self,
        session: Session,
        principal: Principal,
        now: dt.datetime,
        request_id: str | None = None,
    ) -> None:
        self.session = session
        self.principal = principal
        self.now = now
        self.projects = ProjectService(session, principal)
        self.caller = Caller(principal, request_id)

    def _project_for(self, project_ref: str, role: Role | None = None) -> Project:
        project = self.projects.get(project_ref)  # 404 first: another project stays unseen
        refusal = token_action_refusal(self.principal, role)
        if refusal is not None:
            raise Forbidden(refusal)
        return project

    def create(self, project_ref: str, body: TokenCreate) -> tuple[ApiToken, str]:
        """The new token row and its secret (returned this once; only its hash is kept)."""
        project = self._project_for(project_ref, body.role)
        expires_at = expiry(body.expires_at, body.expires_in_s, self.now)
        self._refuse_outliving_the_maker(expires_at)
        secret = new_secret()
        row = ApiToken(
            id=new_id(),
            project_id=project.id,
            role=body.role.value,
            description=body.description,
            secret_hash=secret_hash(secret),
            created_at=self.now,
            expires_at=expires_at,
        )
        self.session.add(row)
        self.session.flush()
        record_done(self.session, "create", "token", row.id, project.id, self.caller)
        log.info(
            "token %s (%s) of project %s made by %s",
            row.id,
            row.role,
            project.name,
            _who(self.principal),
        )
        return row, secret

    def _refuse_outliving_the_maker(self, expires_at: dt.datetime | None) -> None:
        """A token made with an expiring token expires no later than it (403): otherwise a
        token about to expire would mint one that never does, as Proxmox keeps an API
        token's expiry within its user's."""
        if self.principal.token_id is None:  # the unix socket, the first-start admin token
            return
        maker = project_token(self.session, self.principal.project_id, self.principal.token_id)
        limit = None if maker is None else maker.expires_at
        if limit is None:
            return
        limit = limit if limit.tzinfo is not None else limit.replace(tzinfo=dt.UTC)
        if expires_at is None or expires_at > limit:
            raise Forbidden(
                f"this token expires at {limit.isoformat()}: the tokens it makes must expire "
                "by then (give expires_at or expires_in_s)"
            )

    def page(
        self, project_ref: str, limit: int, cursor: str | None
    ) -> tuple[Sequence[ApiToken], str | None]:
        project = self._project_for(project_ref)
        return token_page(self.session, project.id, limit, cursor)

    def get(self, project_ref: str, token_id: str) -> ApiToken:
        project = self._project_for(project_ref)
        row = project_token(self.session, project.id, token_id)
        if row is None:
            raise NotFound(f"no token {token_id!r} in project {project.name!r}")
        return row

    def revoke(self, project_ref: str, token_id: str) -> ApiToken:
        """Revoked from the very next request on (each request reads the token's row); the
        row stays, with revoked_at. Revoking a revoked token changes nothing."""
        row = self.get(project_ref, token_id)
        # a member revokes what it could have made: an admin token is an admin's to revoke
        refusal = token_action_refusal(self.principal, Role(row.role))
        if refusal is not None:
            raise Forbidden(refusal.replace("make admin tokens", "make or revoke admin tokens"))
        if row.revoked_at is None:
            row.revoked_at = self.now
            self.session.flush()
            record_done(self.session, "delete", "token", row.id, row.project_id, self.caller)
            log.info("token %s revoked by %s", row.id, _who(self.principal))
        return row


def whoami(session: Session, principal: Principal) -> dict[str, Any]:
    """The caller's principal, with its project's name and its token's expiry."""
    project = find_project(session, principal.project_id)
    expires_at = None
    if principal.token_id is not None:
        token = project_token(session, principal.project_id, principal.token_id)
        expires_at = token.expires_at if token is not None else None
    return {
        "project_id": principal.project_id,
        "project": project.name if project is not None else None,
        "role": principal.role,
        "via": principal.via,
        "token_id": principal.token_id,
        "expires_at": expires_at,
    }
