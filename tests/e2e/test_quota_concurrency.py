"""Concurrent creates never overshoot a quota (issue 11, item 5), on the real daemon.

50 VM creates at once, with a member token of a project whose `vms` quota is 10, over the
daemon's unix socket: exactly 10 are accepted, 40 get 409 `over-quota` (limit 10, usage
10), and the database, GET /v1/vms and the project's usage all say 10. The quota guard
reads the usage inside the unit of work that inserts (app.services.quotas), which holds the
database's write lock: without that, creates that count before any of them commits all see
room. The VMs are stopped: no qemu runs.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from sqlalchemy import func, select

from app.db.models import Operation, Vm
from app.db.session import Database
from tests.daemon import Daemon
from tests.tenancy import auth, make_project, make_token

CREATES = 50
QUOTA = 10


def test_fifty_concurrent_creates_against_a_quota_of_ten(daemon: Daemon) -> None:
    db = Database(f"sqlite:///{daemon.state_dir / 'kvmnetd.db'}")
    try:
        project = make_project(db, "acme", quotas={"vms": QUOTA})
        member = auth(make_token(db, project, "member"))
        disk = daemon.state_dir / "images" / "empty.img"  # a member's: in the images dir
        disk.parent.mkdir(exist_ok=True)
        disk.touch()
        answers = _create_at_once(daemon, member, str(disk))

        statuses = Counter(status for status, _ in answers)
        assert statuses == {202: QUOTA, 409: CREATES - QUOTA}, answers
        for status, body in answers:
            if status == 409:
                assert body["type"] == "urn:kvmnetd:problem:over-quota", body
                assert (body["quota"], body["limit"], body["usage"], body["requested"]) == (
                    "vms",
                    QUOTA,
                    QUOTA,
                    1,
                )
        accepted = {body["id"] for status, body in answers if status == 202}

        with db.reading() as session:
            stored = set(session.scalars(select(Vm.id).where(Vm.project_id == project)))
            operations = session.scalar(
                select(func.count()).select_from(Operation).where(Operation.resource == "vm")
            )
        assert stored == accepted and operations == QUOTA
        with daemon.client() as client:
            listed = client.get("/v1/vms", params={"limit": 1000}, headers=member).json()
            usage = client.get(f"/v1/projects/{project}/usage", headers=member).json()
        assert {vm["id"] for vm in listed["items"]} == accepted
        assert usage["quotas"]["vms"] == {"limit": QUOTA, "usage": QUOTA}
    finally:
        db.dispose()


def _create_at_once(
    daemon: Daemon, headers: dict[str, str], disk: str
) -> list[tuple[int, dict[str, Any]]]:
    """CREATES threads, each with its own connection, released together by a barrier."""
    barrier = threading.Barrier(CREATES)
    answers: list[tuple[int, dict[str, Any]]] = []
    lock = threading.Lock()

    def create(index: int) -> None:
        body = {"name": f"vm{index}", "memory_mib": 32, "boot": {"disk": disk}}
        with daemon.client(timeout=120) as client:
            barrier.wait(timeout=60)
            answer = client.post(
                "/v1/vms", json={**body, "power_state": "stopped"}, headers=headers
            )
        with lock:
            answers.append((answer.status_code, answer.json()))

    threads = [threading.Thread(target=create, args=(i,)) for i in range(CREATES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert len(answers) == CREATES, "a create did not answer"
    return answers
