"""Which project a request's reads see and its creates land in (issue 11).

Every lookup of a resource a request names goes through a repository with a Scope
(app.domain.tenancy); this module turns a Caller and what it asked for (a create's
`project_id`, a list's `?project=`) into that scope, and answers which of another project's
segments a project may attach to (its `shared_segments`). An unknown project and one the
caller may not name get the same 404, so a member cannot probe for other projects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from app.db.models import Project, ResourceColumns
from app.db.repositories import (
    UUID_LENGTH,
    BridgeRepository,
    NetworkRepository,
    ProjectRepository,
    Repository,
    TapRepository,
    VlanRepository,
    VmRepository,
    find_object,
    network_ref,
)
from app.db.session import Session
from app.domain.errors import Forbidden, NotFound
from app.domain.tenancy import EVERY_PROJECT, Caller, Scope


def _project(session: Session, ref: str) -> Project | None:
    projects = ProjectRepository(session)
    found = projects.get(ref) if len(ref) == UUID_LENGTH else None
    return found if found is not None else projects.get_by_name(ref)


def named_project(session: Session, caller: Caller, ref: str) -> str:
    """The id of project `ref` (its id or name) that the caller may name: any for an admin,
    only its own for a member or reader; 404 alike for an unknown one and another's."""
    found = _project(session, ref)
    if found is None or not (caller.is_admin or found.id == caller.project_id):
        raise NotFound(f"no project {ref!r}")
    return found.id


def list_scope(session: Session, caller: Caller, project: str | None) -> Scope:
    """What a list (or the event stream, or the operations) shows: `?project=` narrows it
    to one project (an admin: any; others: their own), else the caller's scope."""
    if project is None:
        return caller.scope
    return Scope.of(named_project(session, caller, project))


def create_project(session: Session, caller: Caller, project_id: str | None) -> str:
    """The project a create puts its resource in: the caller's own, or the one the body
    names by id or name (named_project: an admin any, others only their own; 404 else)."""
    if project_id is None or project_id == caller.project_id:
        return caller.project_id
    return named_project(session, caller, project_id)


def create_scope(caller: Caller, project_id: str) -> Scope:
    """Where the names in a create's body resolve: in the project it creates in (an admin
    still reaches every project by id)."""
    return Scope(None if caller.is_admin else project_id, project_id)


def unseen_owners(session: Session, scope: Scope, owners: Iterable[tuple[str, str]]) -> set[str]:
    """The ids among `owners` ((resource, id) of our kernel links' marks: tap, vm, bridge,
    vlan) whose resource lies in a project `scope` does not see."""
    repositories: dict[str, Callable[[Session], Repository[Any]]] = {
        "tap": TapRepository,
        "vm": VmRepository,
        "bridge": BridgeRepository,
        "vlan": VlanRepository,
    }
    hidden: set[str] = set()
    for resource, owner_id in owners:
        make = repositories.get(resource)
        row = make(session).get(owner_id) if make is not None else None
        if row is not None and not scope.sees(row.project_id):
            hidden.add(owner_id)
    return hidden


def require_admin(caller: Caller, what: str) -> None:
    """403 for a member or reader: `what` is for admins (the host, uplinks)."""
    if not caller.is_admin:
        raise Forbidden(f"{what} is for admins only (an admin token or the unix socket)")


# ---- shared segments ---------------------------------------------------------------------------


def shared_objects(session: Session, project_id: str, kind: str) -> list[ResourceColumns]:
    """The objects of segment `kind` (bridge, tap, vlan) that project `project_id` may
    attach to though another project owns them: those its `shared_segments` list, and the
    segment objects of the networks it lists."""
    project = ProjectRepository(session).get(project_id)
    entries = project.shared_segments if project is not None else []
    found: list[ResourceColumns] = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            continue
        object_id: str | None = entry["id"]
        if entry.get("resource") == "network":
            network = NetworkRepository(session).get(entry["id"])
            ref = network_ref(network) if network is not None else None
            object_id = ref[1] if ref is not None and ref[0] == kind else None
        elif entry.get("resource") != kind:
            object_id = None
        obj = find_object(session, kind, object_id, EVERY_PROJECT) if object_id else None
        if obj is not None and len(object_id or "") == UUID_LENGTH and obj.id == object_id:
            found.append(obj)
    return found


def shared_object(session: Session, scope: Scope, kind: str, ref: str) -> ResourceColumns | None:
    """The shared object of `kind` that `ref` (its id or name) names, for a scope of one
    project (an admin's scope sees every project already: None)."""
    if scope.project_id is None:
        return None
    for obj in shared_objects(session, scope.project_id, kind):
        if ref in (obj.id, obj.name) or (kind == "vlan" and obj.name.lower() == ref.lower()):
            return obj
    return None
