"""Queries of the projects and tokens API: pages of projects and tokens, what a project
holds (its delete is refused while it holds anything), the segments a project may share,
and the throttled write of tokens' last use."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar, cast

from sqlalchemy import Select, func, or_, select, tuple_, update
from sqlalchemy.orm import Session

from app.db.models import (
    ApiToken,
    Bridge,
    Network,
    Port,
    PortForward,
    Project,
    Tap,
    Uplink,
    Vlan,
    Vm,
    VmNic,
)
from app.db.repositories.base import UUID_LENGTH
from app.domain.cursors import decode_cursor, encode_cursor

P = TypeVar("P", Project, ApiToken)

# what a project may hold, by the kind its delete names (app.domain.dependents words)
HELD_KINDS: tuple[tuple[str, Any], ...] = (
    ("vm", Vm),
    ("port_forward", PortForward),
    ("network", Network),
    ("port", Port),
    ("tap", Tap),
    ("vlan", Vlan),
    ("uplink", Uplink),
    ("bridge", Bridge),
)
SEGMENT_MODELS: dict[str, type[Bridge] | type[Vlan] | type[Network]] = {
    "bridge": Bridge,
    "vlan": Vlan,
    "network": Network,
}
# VLAN and network names are unique without regard to case (their repositories), bridge
# names are kernel names (case-sensitive)
_FOLDS_CASE = frozenset({"vlan", "network"})


def _page(
    session: Session, model: type[P], query: Select[P], limit: int, cursor: str | None
) -> tuple[Sequence[P], str | None]:
    """Keyset paging in creation order (app.domain.cursors)."""
    query = query.order_by(model.created_at, model.id).limit(limit + 1)
    if cursor is not None:
        created, row_id = decode_cursor(cursor)
        query = query.where(tuple_(model.created_at, model.id) > tuple_(created, row_id))
    rows = session.scalars(query).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1].created_at, rows[-1].id) if more else None


def project_page(
    session: Session, limit: int, cursor: str | None, only: str | None = None
) -> tuple[Sequence[Project], str | None]:
    """Projects in creation order; `only`: just the project with that id."""
    query = select(Project)
    if only is not None:
        query = query.where(Project.id == only)
    return _page(session, Project, query, limit, cursor)


def find_project(session: Session, ref: str) -> Project | None:
    """By id, else by name in any case (names are unique without regard to case)."""
    if len(ref) == UUID_LENGTH:
        found = session.get(Project, ref)
        if found is not None:
            return found
    query = select(Project).where(func.lower(Project.name) == ref.lower())
    return session.scalars(query).first()


def project_named(session: Session, name: str, except_id: str | None = None) -> Project | None:
    """Another project whose name equals `name` without regard to case."""
    query = select(Project).where(func.lower(Project.name) == name.lower())
    if except_id is not None:
        query = query.where(Project.id != except_id)
    return session.scalars(query).first()


def project_holdings(session: Session, project_id: str) -> list[tuple[str, str, str]]:
    """(kind, id, name) of every resource row of the project, those being deleted too
    (their rows still reference it until the supervisor removed them)."""
    held: list[tuple[str, str, str]] = []
    for kind, model in HELD_KINDS:
        query = (
            select(model.id, model.name)
            .where(model.project_id == project_id)
            .order_by(model.created_at, model.id)
        )
        held += [(kind, row_id, name) for row_id, name in session.execute(query)]
    return held


def segment_users(
    session: Session, project_id: str, resource: str, segment_id: str
) -> list[tuple[str, str, str]]:
    """(kind, id, name) of the live resources of project `project_id` attached to the
    segment (`resource`: bridge, vlan or network; `segment_id`): its taps, its VMs' NICs
    (named `<vm>/<index>`, the id the VM's), its networks and, on a bridge, its VLANs."""
    column = {"bridge": "bridge_id", "vlan": "vlan_id", "network": "network_id"}[resource]
    users: list[tuple[str, str, str]] = []
    owned: list[tuple[str, type[Tap] | type[Network]]] = (
        [("tap", Tap), ("network", Network)] if resource != "network" else []
    )
    for kind, model in owned:
        query = select(model.id, model.name).where(
            model.project_id == project_id,
            model.deleted.is_(False),
            getattr(model, column) == segment_id,
        )
        users += [(kind, row_id, name) for row_id, name in session.execute(query)]
    if resource == "bridge":
        query = select(Vlan.id, Vlan.name).where(
            Vlan.project_id == project_id, Vlan.deleted.is_(False), Vlan.trunk_id == segment_id
        )
        users += [("vlan", row_id, name) for row_id, name in session.execute(query)]
    nics = (
        select(Vm.id, Vm.name, VmNic.position)
        .join(VmNic, VmNic.vm_id == Vm.id)
        .where(
            Vm.project_id == project_id,
            Vm.deleted.is_(False),
            getattr(VmNic, column) == segment_id,
        )
    )
    users += [("vm_nic", vm_id, f"{name}/{index}") for vm_id, name, index in session.execute(nics)]
    return users


def find_segments(session: Session, resource: str, ref: str) -> list[Bridge | Vlan | Network]:
    """The bridge, VLAN or network `ref` names: the one with that id, else every one of
    that name (names are unique per project only: several projects may hold one)."""
    model = SEGMENT_MODELS[resource]
    if len(ref) == UUID_LENGTH:
        found = cast("Bridge | Vlan | Network | None", session.get(model, ref))
        if found is not None:
            return [found]
    if resource in _FOLDS_CASE:
        query = select(model).where(func.lower(model.name) == ref.lower())
    else:
        query = select(model).where(model.name == ref)
    return list(session.scalars(query.order_by(model.created_at, model.id)))


def live_segment_names(
    session: Session, wanted: Sequence[Mapping[str, Any]]
) -> dict[tuple[str, str], str]:
    """(resource, id) -> name of those `wanted` {"resource", "id"} segments that exist and
    are not being deleted."""
    names: dict[tuple[str, str], str] = {}
    for resource, model in SEGMENT_MODELS.items():
        ids = [s.get("id") for s in wanted if s.get("resource") == resource]
        if not ids:
            continue
        query = select(model.id, model.name).where(model.id.in_(ids), model.deleted.is_(False))
        names.update({(resource, row_id): name for row_id, name in session.execute(query)})
    return names


def token_page(
    session: Session, project_id: str, limit: int, cursor: str | None
) -> tuple[Sequence[ApiToken], str | None]:
    query = select(ApiToken).where(ApiToken.project_id == project_id)
    return _page(session, ApiToken, query, limit, cursor)


def project_token(session: Session, project_id: str, token_id: str) -> ApiToken | None:
    query = select(ApiToken).where(ApiToken.project_id == project_id, ApiToken.id == token_id)
    return session.scalars(query).first()


def touch_tokens(session: Session, used: Mapping[str, dt.datetime]) -> None:
    """Set each token's last_used_at to its time in `used`, never backwards (a late batch
    cannot undo a newer one); tokens gone since are skipped."""
    for token_id, at in used.items():
        session.execute(
            update(ApiToken)
            .where(
                ApiToken.id == token_id,
                or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at < at),
            )
            .values(last_used_at=at)
        )
