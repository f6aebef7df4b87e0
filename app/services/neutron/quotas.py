"""Neutron quotas <-> our project quotas (issue 12, the quotas extension): Neutron's
`network` is our `segments` (bridges and VLANs together), `subnet` our `networks`, `port`
our `ports`. Neutron's -1 (unlimited) is a quota absent from the project's `quotas`.

Only these three resources are shown: Neutron shows the quotas of the resources its loaded
extensions register (a Neutron without the router extension shows no `router` quota), and
this subset has no routers, floating IPs or security groups. Another key in a PUT is 400.

Rules (Neutron's quota policy): an admin lists, reads, sets and resets any project's; a
member or reader reads its own project's only (another one is 404, as an unknown one: kvmnetd
never reveals another project's existence; Neutron answers 403 there). Projects are named by
id, or by name (ours are unique without regard to case).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.db.models import Project
from app.db.repositories import ProjectRepository, find_project
from app.db.session import Session
from app.domain.neutron import (
    QUOTA_RESOURCES,
    NeutronBadRequest,
    NeutronError,
    convert_to_boolean,
    neutron_resource,
)
from app.domain.projects import QUOTA_MAX, stored_quotas
from app.domain.tenancy import Caller, Quota
from app.services.operations import record_done
from app.services.quotas import QuotaGuard

RESOURCES = QUOTA_RESOURCES
UNLIMITED = -1


def _forbidden(what: str) -> NeutronError:
    return NeutronError(403, "PolicyNotAuthorized", f"Only admin can {what}")


class NeutronQuotas:
    def __init__(self, session: Session, caller: Caller) -> None:
        self.session = session
        self.caller = caller

    def _project(self, ref: str, write: bool) -> Project:
        """The project `ref` (id or name) names: 403 for a non-admin's write, 404
        ProjectNotFound for an unknown one and, for a non-admin, another project (its
        existence is not revealed, as everywhere in kvmnetd; Neutron says 403 there)."""
        if write and not self.caller.is_admin:
            raise _forbidden("edit quotas")
        row = find_project(self.session, ref)
        own = row is not None and row.id == self.caller.project_id
        if row is None or not (self.caller.is_admin or own):
            raise NeutronError(404, "ProjectNotFound", f"Project {ref} could not be found.")
        return row

    @staticmethod
    def _limits(row: Project) -> dict[str, Any]:
        stored = stored_quotas(row.quotas)
        found: dict[str, Any] = {
            name: stored.get(quota.value, UNLIMITED) for name, quota in RESOURCES.items()
        }
        found.update(project_id=row.id, tenant_id=row.id)
        return found

    def listed(self) -> list[dict[str, Any]]:
        """Admin only: the projects with a limit on a Neutron resource (non-default)."""
        if not self.caller.is_admin:
            raise _forbidden("list quotas")
        rows = ProjectRepository(self.session).all()
        ours = {q.value for q in RESOURCES.values()}
        return [self._limits(r) for r in rows if ours & set(stored_quotas(r.quotas))]

    def shown(self, ref: str) -> dict[str, Any]:
        return self._limits(self._project(ref, write=False))

    def default(self, ref: str) -> dict[str, Any]:
        """Every project's default: unlimited."""
        row = self._project(ref, write=False)
        found: dict[str, Any] = dict.fromkeys(RESOURCES, UNLIMITED)
        found.update(project_id=row.id, tenant_id=row.id)
        return found

    def details(self, ref: str) -> dict[str, Any]:
        """{resource: {used, limit, reserved}} (the quota-details extension; nothing is
        ever reserved here: a create charges its quota in its own transaction)."""
        row = self._project(ref, write=False)
        usage = {use.quota: use for use in QuotaGuard(self.session).usage(row.id)}
        found: dict[str, Any] = {
            name: {
                "used": usage[quota].usage,
                "limit": UNLIMITED if usage[quota].limit is None else usage[quota].limit,
                "reserved": 0,
            }
            for name, quota in RESOURCES.items()
        }
        found.update(project_id=row.id, tenant_id=row.id)
        return found

    def update(self, ref: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Admin only. Each Neutron resource given sets our quota (-1: unlimited); another
        key is 400. check_limit true refuses a limit below the current usage (400, as
        Neutron's quota-check-limit extension)."""
        row = self._project(ref, write=True)
        check_limit = _check_limit(body.get("check_limit", False))
        wanted = _wanted(body, row.id)
        if check_limit:
            usage = {u.quota: u.usage for u in QuotaGuard(self.session).usage(row.id)}
            for quota, limit in wanted.items():
                if limit is not None and limit < usage[quota]:
                    raise NeutronError(
                        400,
                        "InvalidQuotaValue",
                        f"Change would make usage less than 0 for the following resources: "
                        f"['{neutron_resource(quota.value)}']",
                    )
        self._store(row, wanted)
        return self._limits(row)

    def reset(self, ref: str) -> None:
        """Admin only: every Neutron resource of the project back to unlimited."""
        row = self._project(ref, write=True)
        self._store(row, dict.fromkeys(RESOURCES.values()))

    def _store(self, row: Project, wanted: Mapping[Quota, int | None]) -> None:
        quotas = stored_quotas(row.quotas)
        for quota, limit in wanted.items():
            if limit is None:
                quotas.pop(quota.value, None)
            else:
                quotas[quota.value] = limit
        if quotas != stored_quotas(row.quotas):
            row.quotas = quotas
            self.session.flush()
            record_done(self.session, "update", "project", row.id, row.id, self.caller)


def _check_limit(value: object) -> bool:
    """A boolean as neutron-lib's convert_to_boolean reads one ("true", "False", 1, ...)."""
    converted = convert_to_boolean(value)
    if converted is None:
        raise NeutronBadRequest(f"Invalid input for check_limit. Reason: {value!r} is not a bool.")
    return converted


def _wanted(body: Mapping[str, Any], project_id: str) -> dict[Quota, int | None]:
    """Our quotas from a PUT's `quota` object: Neutron's convert_to_int, -1 unlimited."""
    wanted: dict[Quota, int | None] = {}
    for key, value in body.items():
        if key in ("project_id", "tenant_id"):
            if value != project_id:
                raise NeutronBadRequest(f"Invalid input for {key}. Reason: not {project_id}.")
            continue
        if key == "check_limit":
            continue
        if key not in RESOURCES:
            known = ", ".join(RESOURCES)
            raise NeutronBadRequest(
                f"Unrecognized attribute(s) '{key}' (the quotas here are: {known})"
            )
        wanted[RESOURCES[key]] = _limit(key, value)
    return wanted


def _limit(key: str, value: object) -> int | None:
    if isinstance(value, str) and value.lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise NeutronBadRequest(f"Invalid input for {key}. Reason: '{value}' is not an integer.")
    if value == UNLIMITED:
        return None
    if not 0 <= value <= QUOTA_MAX:
        raise NeutronBadRequest(
            f"Invalid input for {key}. Reason: '{value}' should be {UNLIMITED} (unlimited) "
            f"or 0-{QUOTA_MAX}."
        )
    return value
