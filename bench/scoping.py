"""What project scoping costs a list: 1000 VMs across 10 projects, listed as a member (its
~100) and as an admin (all 1000). Target (issue 11): scoping costs no more than 1.5x.

The VMs are stopped rows written straight into the real daemon's database (no qemu), the
projects' rows interleaved in creation order, so a member's rows are scattered over the
table as they would be on a shared host. The daemon runs as a subprocess in a throwaway
kvt-* namespace and is asked over its unix socket.

What is compared (a list's cost grows with the rows it returns, so raw times of 100 rows vs
1000 rows say nothing about scoping):

1. Per page of 100 rows: the member's page (100 rows found among 1000: WHERE project_id =
   ? on top of the keyset order) vs an admin page of 100 rows of the same 1000 (no filter).
   Same rows returned, same presentation: the ratio is the filter's cost. This is the
   figure the target applies to.
2. Per returned row over whole lists: the member's whole list (~100 rows) vs the admin's
   whole list (1000 rows, 10 pages), each divided by the rows it returned.

Both are measured over HTTP (the first page) and at the repository with the presenter (the
daemon's own scoped read, ResourceRepository.page with the caller's Scope, presented as GET
/v1/vms presents rows). Run as `.venv/bin/python -m bench.scoping` (root).
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from app.api.presenters import vm_out
from app.db.models import Vm
from app.db.repositories import VmRepository
from app.db.session import Database, Session
from app.domain.tenancy import EVERY_PROJECT, Role, Scope
from bench.taps import fresh_netns
from tests.daemon import Daemon
from tests.tenancy import auth, make_project, make_token

PROJECTS = 10
VMS = 1000
PAGE = 100
ROUNDS = 30
TARGET = 1.5


def insert_vms(db: Database, projects: Sequence[str]) -> None:
    """VMS stopped VMs, round-robin over the projects, in one transaction."""
    start = dt.datetime.now(dt.UTC)
    with db.unit_of_work() as session:
        for i in range(VMS):
            session.add(
                Vm(
                    name=f"vm{i:04d}",
                    project_id=projects[i % len(projects)],
                    memory_mib=32,
                    boot={"disk": "/nonexistent-kvmnetd-bench"},
                    power_state="stopped",
                    status="stopped",
                    generation=1,
                    observed_generation=1,
                    created_at=start + dt.timedelta(microseconds=i),
                )
            )


def best_of(fn: Callable[[], Any], rounds: int = ROUNDS) -> float:
    """The median of `rounds` timings, seconds (one warm-up first)."""
    fn()
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


# ---- over HTTP ----------------------------------------------------------------------------------


def http_pages(daemon: Daemon, headers: dict[str, str]) -> list[int]:
    """Every page of GET /v1/vms?limit=PAGE: the rows each returned."""
    sizes, cursor = [], None
    with daemon.client() as client:
        while True:
            params: dict[str, Any] = {"limit": PAGE} | ({"cursor": cursor} if cursor else {})
            body = client.get("/v1/vms", params=params, headers=headers).json()
            sizes.append(len(body["items"]))
            cursor = body["next_cursor"]
            if cursor is None:
                return sizes


def http_first_page(client: httpx.Client, headers: dict[str, str]) -> Callable[[], Any]:
    def get() -> Any:
        answer = client.get("/v1/vms", params={"limit": PAGE}, headers=headers)
        assert answer.status_code == 200, answer.text
        return answer

    return get


# ---- at the repository: the scoped read and the presenter, without HTTP ------------------------


def repository_page(
    db: Database, project_id: str | None, cursor: str | None = None
) -> tuple[int, str | None]:
    """One page as GET /v1/vms reads and presents it; with `project_id`, only that
    project's rows (the filter the scoped read adds)."""
    with db.reading() as session:
        rows, next_cursor = _page(session, project_id, cursor)
        repo = VmRepository(session)
        views = [vm_out(row, repo.nics(row.id)) for row in rows]
        return len(views), next_cursor


def _page(session: Session, project_id: str | None, cursor: str | None) -> tuple[list[Vm], Any]:
    """The daemon's own paged read: a member's scope (its project) or an admin's (all)."""
    scope = EVERY_PROJECT if project_id is None else Scope.of(project_id)
    rows, next_cursor = VmRepository(session).page(PAGE, cursor, scope)
    return list(rows), next_cursor


def whole_list(db: Database, project_id: str | None) -> int:
    count, cursor = repository_page(db, project_id)
    while cursor is not None:
        more, cursor = repository_page(db, project_id, cursor)
        count += more
    return count


# ---- the run ------------------------------------------------------------------------------------


def report(label: str, member_s: float, member_rows: int, admin_s: float, admin_rows: int) -> None:
    ratio = member_s / admin_s
    print(
        f"{label:<44} member {member_s * 1e3:8.2f} ms ({member_rows:4d} rows)   "
        f"admin {admin_s * 1e3:8.2f} ms ({admin_rows:4d} rows)   ratio {ratio:5.2f}"
        f"   {'met' if ratio <= TARGET else 'MISSED'} (target <= {TARGET})"
    )


def run(workdir: Path) -> None:
    with fresh_netns() as netns:
        daemon = Daemon(netns, workdir).start()
        db = Database(f"sqlite:///{daemon.state_dir / 'kvmnetd.db'}")
        try:
            projects = [make_project(db, f"p{i}") for i in range(PROJECTS)]
            member = auth(make_token(db, projects[0], Role.MEMBER))
            insert_vms(db, projects)
            seen = sum(http_pages(daemon, member))
            scoped = seen < VMS
            print(
                f"{VMS} stopped VMs in {PROJECTS} projects; a member's GET /v1/vms returns "
                f"{seen} rows: {'scoped' if scoped else 'NOT scoped yet (scope helper)'}"
            )
            with daemon.client() as client:
                admin_page = best_of(http_first_page(client, {}))
                if scoped:
                    member_page = best_of(http_first_page(client, member))
                    report(
                        "HTTP, one page (member's vs admin's)", member_page, seen, admin_page, PAGE
                    )
                else:
                    print(f"HTTP, one admin page of {PAGE}: {admin_page * 1e3:.2f} ms")
            mine = projects[0]
            member_rows = repository_page(db, mine)[0]
            report(
                "repository+presenter, one page",
                best_of(lambda: repository_page(db, mine)),
                member_rows,
                best_of(lambda: repository_page(db, None)),
                PAGE,
            )
            member_whole = best_of(lambda: whole_list(db, mine), ROUNDS // 3)
            admin_whole = best_of(lambda: whole_list(db, None), ROUNDS // 3)
            report(
                "whole lists, per returned row",
                member_whole / member_rows,
                member_rows,
                admin_whole / VMS,
                VMS,
            )
        finally:
            db.dispose()
            daemon.kill()


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    with tempfile.TemporaryDirectory(prefix="kvt-bench-scoping-") as workdir:
        run(Path(workdir))


if __name__ == "__main__":
    main()
