"""The quota guard, a project's usage, and the VLAN id a project's VLAN gets.

Every create that a quota limits (and a VM PATCH that raises vcpus or memory_mib) asks
`QuotaGuard.charge` in its own unit of work, before it adds its rows. Units of work that
write are serialized (app.db.session.Database holds a write lock around each one), so the
usage read here cannot change before the insert commits: concurrent creates never overshoot
a limit. Over a limit: 409 `over-quota` (app.domain.quotas.OverQuota) and the transaction
rolls back, so nothing is stored. What counts as usage: app.db.repositories.quotas.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from app.db.models import Project
from app.db.repositories import ProjectRepository, quota_usages, trunk_vids
from app.db.session import Session
from app.domain.errors import NotFound
from app.domain.quotas import check_quota, check_vid_allowed, limit_of, next_free_vid, vlan_ranges
from app.domain.tenancy import Principal, Quota


@dataclass(frozen=True, slots=True)
class QuotaUse:
    quota: Quota
    limit: int | None  # None: unlimited
    usage: int


def _project(session: Session, project_id: str) -> Project:
    project = ProjectRepository(session).get(project_id)
    if project is None:  # a principal's project is a live row (its tokens cascade with it)
        raise NotFound(f"no project {project_id!r}")
    return project


class QuotaGuard:
    def __init__(self, session: Session) -> None:
        self.session = session

    def charge(self, project_id: str, asked: Mapping[Quota, int]) -> None:
        """Refuse (409 over-quota) when the project's usage plus `asked` (quota -> how much
        more) would exceed a limit. Only limited quotas are counted: a project without
        quotas costs one primary-key read."""
        project = _project(self.session, project_id)
        limits = {q: limit_of(project.quotas, q, project.name) for q, n in asked.items() if n > 0}
        limited = {q: limit for q, limit in limits.items() if limit is not None}
        if not limited:
            return
        usage = quota_usages(self.session, project_id, limited)
        for quota, limit in limited.items():
            check_quota(quota, limit, usage[quota], asked[quota], project.name)

    def usage(self, project_id: str) -> list[QuotaUse]:
        """Every quota of the project with its limit (None: unlimited) and usage."""
        project = _project(self.session, project_id)
        usage = quota_usages(self.session, project_id, list(Quota))
        return [QuotaUse(q, limit_of(project.quotas, q, project.name), usage[q]) for q in Quota]


def project_usage(
    session: Session, ref: str, principal: Principal
) -> tuple[Project, list[QuotaUse]]:
    """A project (by id, else by name in any case) with every quota's limit and usage. An
    admin sees any project; anyone else only their own: another project is 404, as an
    unknown one (its existence is not revealed)."""
    projects = ProjectRepository(session)
    project = projects.get(ref) or projects.get_by_name(ref)
    if project is None or not (principal.is_admin or project.id == principal.project_id):
        raise NotFound(f"no project {ref!r}")
    return project, QuotaGuard(session).usage(project.id)


def vm_asks(vcpus: int, memory_mib: int, vms: int = 1) -> dict[Quota, int]:
    """What a VM create (or a PATCH's increase, with vms=0) asks of the quotas."""
    return {Quota.VMS: vms, Quota.VCPUS: vcpus, Quota.MEMORY_MIB: memory_mib}


def choose_vid(
    session: Session,
    project_id: str,
    principal: Principal,
    trunk_id: str,
    trunk_name: str,
    vid: int | None,
) -> int:
    """The VLAN id a VLAN of `project_id` on this trunk gets: `vid` if the principal may use
    it (a member only inside the project's ranges: 403), else (None) the lowest free id of
    the project's ranges on the trunk (409 when none is free; an admin in a project without
    ranges must give one: 422). Whether a given id is free stays the VLAN service's check."""
    if vid is not None and principal.is_admin:
        return vid  # any id (the stored ranges are not even read)
    project = _project(session, project_id)
    ranges = vlan_ranges(project.vlan_ranges, project.name)
    if vid is not None:
        check_vid_allowed(vid, ranges, principal.is_admin, project.name)
        return vid
    return next_free_vid(
        ranges, trunk_vids(session, trunk_id), trunk_name, project.name, principal.is_admin
    )
