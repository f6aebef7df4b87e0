"""Scopes (app.domain.tenancy) as the repositories apply them: what a member, an admin and
the daemon itself find by id, by name and in a page."""

from __future__ import annotations

from app.db.repositories import VmRepository
from app.db.session import Database
from app.domain.tenancy import (
    ADMIN_BY_SOCKET,
    DEFAULT_PROJECT_ID,
    EVERY_PROJECT,
    Caller,
    Principal,
    Role,
    Scope,
    Via,
)
from app.schemas.vms import VmCreate
from app.services.vms import VmService
from tests.tenancy import make_project
from tests.unit.test_vm_service import HOST


def _vm(db: Database, name: str, project_id: str) -> str:
    body = VmCreate.model_validate(
        {"name": name, "boot": {"disk": "/dev/null"}, "project_id": project_id}
    )
    with db.unit_of_work() as s:
        return VmService(s).create(body, HOST)[0].id


def test_a_scope_finds_its_projects_rows_by_id_name_and_page(db: Database) -> None:
    acme = make_project(db, "acme")
    mine, theirs = _vm(db, "web", acme), _vm(db, "web", DEFAULT_PROJECT_ID)  # one name, twice
    member = Caller(Principal(acme, Role.MEMBER, Via.TOKEN, "t1")).scope
    admin = Caller(ADMIN_BY_SOCKET).scope
    assert member == Scope.of(acme) and admin == Scope(None, DEFAULT_PROJECT_ID)
    with db.reading() as s:
        vms = VmRepository(s)
        found = vms.find("WEB", member)
        assert found is not None and found.id == mine
        assert vms.find(theirs, member) is None  # another project's id: as unknown
        found = vms.find("web", admin)  # an admin's names resolve in its own project
        assert found is not None and found.id == theirs
        found = vms.find(mine, admin)  # and its ids anywhere
        assert found is not None and found.id == mine
        assert [r.id for r in vms.page(10, None, member)[0]] == [mine]
        assert {r.id for r in vms.page(10, None, admin)[0]} == {mine, theirs}
        assert vms.find("web", EVERY_PROJECT) is not None
        assert vms.name_holder("WEB", acme) is not None
        assert vms.name_holder("web", acme, except_id=mine) is None
