"""Every VM action from every VM status (issue 9 item 7), parametrized from the action table
itself (app.domain.vm_actions.TABLE): a status or an action added later without a test is
a failing test here (test_every_status_is_reached).

Each case reaches its condition for real with the in-process app in a throwaway namespace:
qemu runs without a guest kernel (SeaBIOS over an empty disk, or a boot sector that powers
the machine off after ~1 s), so no guest boots. `crashed` is a kill -9 of qemu; `error` is a
kernel path qemu cannot load, or a crash loop; the daemon-restart conditions stop the app
and start a new one on the same state (a qemu kept and adopted, or killed meanwhile: lost).
`pending` is a change written while the VM worker is stopped (the worker never saw it);
`starting` is a launch held up by its disk: a FIFO, whose open() blocks qemu before its QMP
monitor answers (the test lets it go on: qemu then refuses the FIFO and the launch fails).
Then the action is sent through the
HTTP API and the answer, the written desired state and what the worker makes of it are
checked against the cell.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.db.models import Vm
from app.domain.vm_actions import TABLE, Effect, Outcome, StopMode, VmVerb
from app.domain.vms import PowerState, VmStatus
from tests.api.vm_lab import (
    FAST_LADDER,
    POWEROFF_BOOT_SECTOR,
    SLOW_LADDER,
    Lab,
    create,
    get,
    settled,
    wait_vm,
)
from tests.api.vm_lab import lab as lab
from tests.host.test_qemu import live_pids_with_uuid

# ---- reaching each condition for real -------------------------------------------------------


def running_vm(lab: Lab, client: TestClient, **extra: Any) -> dict[str, Any]:
    vm = create(lab, client, **extra)
    return wait_vm(client, vm["id"], settled("running"))


def reach_running(lab: Lab, client: TestClient) -> dict[str, Any]:
    return running_vm(lab, client)


def reach_stopped(lab: Lab, client: TestClient) -> dict[str, Any]:
    vm = create(lab, client, power_state="stopped")
    return wait_vm(client, vm["id"], settled("stopped"))


def reach_crashed(lab: Lab, client: TestClient) -> dict[str, Any]:
    vm = running_vm(lab, client)
    os.kill(vm["pid"], signal.SIGKILL)
    return wait_vm(client, vm["id"], lambda v: v["status"] == "crashed")


def reach_error(lab: Lab, client: TestClient) -> dict[str, Any]:
    vm = create(lab, client, boot={"kernel": str(lab.base / "no-such-kernel")})
    return wait_vm(client, vm["id"], settled("error"))


def reach_crash_loop(lab: Lab, client: TestClient) -> dict[str, Any]:
    disk = lab.disk("poweroff.img", POWEROFF_BOOT_SECTOR)
    vm = create(lab, client, disk=disk, restart_policy="always")
    vm = wait_vm(client, vm["id"], settled("error"), timeout=40)
    assert "crash loop" in vm["status_reason"], vm
    return vm


def _frozen_then(
    lab: Lab, client: TestClient, method: str, path: str, status: str
) -> dict[str, Any]:
    """A qemu that answers nothing (SIGSTOP): the graceful ladder waits out powerdown."""
    vm = running_vm(lab, client)
    os.kill(vm["pid"], signal.SIGSTOP)
    answer = client.request(method, f"/v1/vms/{vm['id']}{path}")
    assert answer.status_code == 202, answer.text
    return wait_vm(client, vm["id"], lambda v: v["status"] == status)


def reach_starting(lab: Lab, client: TestClient) -> dict[str, Any]:
    fifo = lab.base / "slow.fifo"
    os.mkfifo(fifo, 0o666)
    os.chmod(fifo, 0o666)  # the umask
    vm = create(lab, client, boot={"disk": str(fifo), "snapshot": True})
    return wait_vm(client, vm["id"], lambda v: v["status"] == "starting")


def unblock_fifo(lab: Lab) -> None:
    """Open the FIFO's other end once qemu waits on it, so its open() returns."""
    deadline = time.monotonic() + 10
    while True:
        try:
            os.close(os.open(lab.base / "slow.fifo", os.O_WRONLY | os.O_NONBLOCK))
            return
        except OSError:  # ENXIO: qemu has not opened it yet
            assert time.monotonic() < deadline, "qemu never opened its disk"
            time.sleep(0.02)


def reach_stopping(lab: Lab, client: TestClient) -> dict[str, Any]:
    return _frozen_then(lab, client, "POST", "/stop", "stopping")


def reach_deleting(lab: Lab, client: TestClient) -> dict[str, Any]:
    return _frozen_then(lab, client, "DELETE", "", "deleting")


@dataclass(frozen=True)
class Condition:
    status: VmStatus
    reach: Callable[[Lab, TestClient], dict[str, Any]] | None = None
    app_lifecycle: str | None = None  # reached across app restarts / with the worker stopped


CONDITIONS: dict[str, Condition] = {
    "pending": Condition(VmStatus.PENDING, app_lifecycle="pending"),
    "starting": Condition(VmStatus.STARTING, reach_starting),
    "running": Condition(VmStatus.RUNNING, reach_running),
    "adopted-after-restart": Condition(VmStatus.RUNNING, app_lifecycle="adopted"),
    "stopping": Condition(VmStatus.STOPPING, reach_stopping),
    "stopped": Condition(VmStatus.STOPPED, reach_stopped),
    "crashed": Condition(VmStatus.CRASHED, reach_crashed),
    "lost-in-restart": Condition(VmStatus.CRASHED, app_lifecycle="lost"),
    "error": Condition(VmStatus.ERROR, reach_error),
    "crash-loop": Condition(VmStatus.ERROR, reach_crash_loop),
    "deleting": Condition(VmStatus.DELETING, reach_deleting),
}


def test_every_status_is_reached() -> None:
    assert {c.status for c in CONDITIONS.values()} == set(VmStatus) == set(TABLE)
    assert all(set(row) == set(VmVerb) for row in TABLE.values())


@contextlib.contextmanager
def in_condition(lab: Lab, name: str) -> Iterator[tuple[TestClient, dict[str, Any]]]:
    """An app with a VM in condition `name` (the app may be a second one, after a restart)."""
    condition = CONDITIONS[name]
    ladder = (
        SLOW_LADDER if condition.status in (VmStatus.STOPPING, VmStatus.DELETING) else (FAST_LADDER)
    )
    if condition.reach is not None:
        with lab.app(ladder) as client:
            yield client, condition.reach(lab, client)
        return
    if condition.app_lifecycle in ("adopted", "lost"):
        with lab.app() as client:
            first = running_vm(lab, client)
        if condition.app_lifecycle == "lost":
            os.kill(first["pid"], signal.SIGKILL)
        with lab.app() as client:
            want = "running" if condition.app_lifecycle == "adopted" else "crashed"
            vm = wait_vm(client, first["id"], lambda v: v["status"] == want)
            if want == "running":
                assert vm["pid"] == first["pid"]  # the same qemu, adopted
                assert vm["user"] == first["user"] and vm["user"]["name"] == "kvmnetd-qemu"
            else:
                assert "not watching" in vm["status_reason"], vm
            yield client, vm
        return
    assert condition.app_lifecycle == "pending"
    with lab.app() as client:
        vm = reach_stopped(lab, client)
        client.app.state.vm_worker.stop()
        answer = client.post(f"/v1/vms/{vm['id']}/start")
        assert answer.status_code == 202, answer.text
        vm = get(client, vm["id"])
        assert vm["status"] == condition.status.value, vm
        yield client, vm


# ---- the action and what must follow --------------------------------------------------------


def send(client: TestClient, vm_id: str, verb: VmVerb) -> Any:
    if verb is VmVerb.DELETE:
        return client.delete(f"/v1/vms/{vm_id}")
    if verb is VmVerb.PATCH:
        return client.patch(f"/v1/vms/{vm_id}", json={"memory_mib": 48})
    return client.post(f"/v1/vms/{vm_id}/{verb.value}")


def expected_write(cell: Outcome, vm: dict[str, Any], stop_mode: str) -> bool:
    """Whether a desire cell writes: independent of the service's own helper."""
    assert cell.power is not None
    if cell.renew or vm["power_state"] != cell.power.value:
        return True
    return (
        cell.power is PowerState.STOPPED
        and cell.stop_mode is StopMode.KILL
        and stop_mode != "kill"
        and vm["status"] != "stopped"
    )


def stop_mode_of(client: TestClient, vm_id: str) -> str:
    db = client.app.state.context.db
    with db.reading() as session:
        row = session.get(Vm, vm_id)
        assert row is not None
        return row.stop_mode


CASES = [(name, verb) for name in CONDITIONS for verb in VmVerb]


@pytest.mark.parametrize(("condition", "verb"), CASES, ids=[f"{c}-{v}" for c, v in CASES])
def test_action_from_condition(lab: Lab, condition: str, verb: VmVerb) -> None:
    status = CONDITIONS[condition].status
    cell = TABLE[status][verb]
    with in_condition(lab, condition) as (client, before):
        stop_mode = stop_mode_of(client, before["id"])
        answer = send(client, before["id"], verb)
        if cell.effect is Effect.REFUSE:
            assert answer.status_code == 409, answer.text
            problem = answer.json()
            assert answer.headers["content-type"].startswith("application/problem+json")
            assert cell.reason in problem["detail"] and status.value in problem["detail"]
            after = get(client, before["id"])
            assert after["generation"] == before["generation"]  # nothing written
            release_frozen(lab, condition, before)
            return
        if cell.effect is Effect.NOOP:
            assert answer.status_code == unchanged_code(before), answer.text
            assert answer.json()["generation"] == before["generation"]
            release_frozen(lab, condition, before)
            return
        if cell.effect is Effect.RESET:
            assert answer.status_code == 204, answer.text
            after = get(client, before["id"])
            assert after["pid"] == before["pid"] and after["generation"] == before["generation"]
            return
        if cell.effect is Effect.DELETE:
            assert answer.status_code == 202, answer.text
            assert answer.json()["status"] == "deleting"
            if condition == "deleting":
                assert answer.json()["generation"] == before["generation"]  # already asked
            release_frozen(lab, condition, before)
            if condition == "pending":
                return  # the worker is stopped
            wait_gone(client, before["id"])
            assert live_pids_with_uuid({before["id"]}) == []
            return
        if cell.effect is Effect.UPDATE:
            assert answer.status_code == 202, answer.text
            vm = answer.json()
            assert vm["generation"] == before["generation"] + 1 and vm["memory_mib"] == 48
            assert vm["status"] == before["status"]  # a PATCH is no power intent
            follow_update(lab, client, condition, before)
            if condition not in ("pending", "stopping"):
                operation = client.get(f"/v1/operations/{answer.headers['X-Operation-Id']}")
                assert operation.json()["status"] == "succeeded", operation.text
            return
        assert cell.effect is Effect.DESIRE and cell.power is not None
        writes = expected_write(cell, before, stop_mode)
        assert answer.status_code == (202 if writes else unchanged_code(before)), answer.text
        vm = answer.json()
        assert vm["power_state"] == cell.power.value
        assert vm["generation"] == before["generation"] + (1 if writes else 0)
        follow_desire(lab, client, condition, before, cell.power)


def unchanged_code(before: dict[str, Any]) -> int:
    """Nothing written: 200, or 202 while an earlier change is still under way."""
    return 200 if settled(before["status"])(before) and before["status"] != "pending" else 202


def release_frozen(lab: Lab, condition: str, before: dict[str, Any]) -> None:
    """End the SIGSTOPped qemu of a stopping or deleting VM (its ladder waits 20 s); let a
    starting one's launch go on (and fail)."""
    if condition == "starting":
        unblock_fifo(lab)
    if condition in ("stopping", "deleting"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(before["pid"], signal.SIGKILL)


def wait_gone(client: TestClient, vm_id: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while client.get(f"/v1/vms/{vm_id}").status_code != 404:
        assert time.monotonic() < deadline, "the VM was not removed"
        time.sleep(0.05)


def follow_desire(
    lab: Lab, client: TestClient, condition: str, before: dict[str, Any], power: PowerState
) -> None:
    """The worker reaches what was asked (or fails the same way again, for a VM that
    cannot run: its new attempt is recorded)."""
    if condition == "pending":
        return  # the worker is stopped
    vm_id = before["id"]
    if condition == "stopping" and stop_mode_of(client, vm_id) == "kill":
        # escalated: SIGKILL now, not after the ladder's 20 s power-down deadline
        wait_vm(client, vm_id, lambda v: v["pid"] is None, timeout=5)
    else:
        release_frozen(lab, condition, before)
    if power is PowerState.STOPPED:
        vm = wait_vm(client, vm_id, settled("stopped"))
        assert vm["pid"] is None
        assert live_pids_with_uuid({vm_id}) == []
        return
    if condition in ("error", "starting"):  # its kernel or disk is still bad: failed again
        wait_vm(client, vm_id, settled("error"))
        return
    if condition == "crash-loop":  # a new start clears the loop: it runs (and loops) again
        wait_vm(client, vm_id, lambda v: v["restarts"] > before["restarts"] or v["pid"])
        return
    vm = wait_vm(client, vm_id, settled("running"))
    assert vm["pid"] is not None and live_pids_with_uuid({vm_id}) == [vm["pid"]]


def follow_update(lab: Lab, client: TestClient, condition: str, before: dict[str, Any]) -> None:
    """A PATCH never starts or stops the VM; a running qemu keeps its memory until the next
    start and says so."""
    if condition == "pending":
        return
    if condition == "starting":  # the launch fails; the PATCH starts no new one
        release_frozen(lab, condition, before)
        vm = wait_vm(client, before["id"], settled("error"))
        assert "regular file" in vm["status_reason"], vm
        assert vm["restarts"] == 0 and live_pids_with_uuid({before["id"]}) == []
        return
    if condition == "stopping":
        release_frozen(lab, condition, before)
        wait_vm(client, before["id"], settled("stopped"))
        return
    vm = wait_vm(
        client,
        before["id"],
        lambda v: v["observed_generation"] == v["generation"] and v["status"] != "pending",
    )
    assert vm["status"] == before["status"], vm
    assert vm["pid"] == before["pid"]
    assert vm["restart_pending"] is (before["status"] == "running"), vm
