"""One VM's damaged run-directory file stays that VM's fault (issue 9, item 4), against real
qemu (TCG, `-machine none`, no guest) in a kvt- namespace: every kind of damage
(tests/faults.py) in the launch record and in qemu's pidfile, and a QMP socket that is a
regular file, a dead socket, or a socket answering garbage.

adopt_from() must never raise for a damaged file, never hold (and so never signal) anything
but the VM's own qemu — the planted `sleep` survives — re-adopt a qemu that still runs by
its own command line (and rewrite its record), report what was wrong, and say "nothing runs"
when the qemu is gone."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from app.db.models import Vm
from app.host.procs import read_pid_file
from app.host.qemu import (
    LaunchRecord,
    LaunchSpec,
    QemuProcess,
    QemuUnresponsive,
    RunPaths,
    ShutdownDeadlines,
    ShutdownStep,
    adopt_from,
    launch,
    shutdown,
)
from tests.faults import KINDS, SHAPES, clear, damage, stranger
from tests.host.test_qemu import QEMU, Qemus, live_pids_with_uuid, qemus
from tests.host.test_vm_worker import Env, env, guest

__all__ = ["env", "guest", "qemus", "stranger"]  # fixtures

FILES = ("launch.json", "qemu.pid")
# Bounds for a qemu start, exit and QMP answer on a CI machine whose two cores also run a
# nested TCG guest and another test worker: they only end a wait, they claim no speed.
BOUND = 30


async def running_qemu(qemus: Qemus) -> QemuProcess:
    """A qemu whose daemon let go of it (the handle closed, qemu still running)."""
    process = await qemus.launch(qemus.spec(), timeout=BOUND)
    await process.close()
    return process


def with_pid(name: str, good: bytes) -> object:
    def content(pid: str) -> bytes:
        if name == "qemu.pid":
            return f"{pid}\n".encode()
        return json.dumps({**json.loads(good), "pid": int(pid)}).encode()

    return content


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", FILES)
async def test_a_damaged_file_of_a_running_qemu_is_reported_and_it_is_re_adopted(
    name: str, kind: str, qemus: Qemus, stranger: subprocess.Popen[bytes]
) -> None:
    launched = await running_qemu(qemus)
    path = launched.run_dir / name
    good = path.read_bytes()
    damage(path, kind, good, stranger.pid, with_pid(name, good))  # type: ignore[arg-type]

    found = await adopt_from(launched.run_dir, launched.vm_id, timeout=BOUND)
    assert found.process is not None, found.problem
    qemus.handles.append(found.process)
    assert (found.process.pid, found.process.start_time) == (launched.pid, launched.start_time)
    assert await found.process.qmp.status() == "running"
    if (kind == "huge-number" and name == "qemu.pid") or kind == "symlink":
        assert found.problem is not None
    else:
        assert found.problem is not None and ("pid" in found.problem or "record" in found.problem)
    if name == "launch.json":  # the record is rewritten from /proc: the next adoption is exact
        record = LaunchRecord.read(RunPaths(launched.run_dir))
        assert record is not None and (record.pid, record.argv) == (launched.pid, launched.argv)
    assert stranger.poll() is None
    assert live_pids_with_uuid({launched.vm_id}) == [launched.pid]  # never a second copy


@pytest.mark.parametrize("kind", ["zero", "minus-one", "stale-pid", "binary", "fifo"])
@pytest.mark.parametrize("name", FILES)
async def test_a_damaged_file_of_a_gone_qemu_means_nothing_runs(
    name: str, kind: str, qemus: Qemus, stranger: subprocess.Popen[bytes]
) -> None:
    launched = await qemus.launch(qemus.spec(), timeout=BOUND)
    path = launched.run_dir / name
    good = path.read_bytes()
    launched.send_signal(signal.SIGKILL)
    await launched.wait(BOUND)
    for leftover in FILES:  # as after a crash while no daemon watched
        if not (launched.run_dir / leftover).exists():
            (launched.run_dir / leftover).write_bytes(good if leftover == name else b"1\n")
    damage(path, kind, good, stranger.pid, with_pid(name, good))  # type: ignore[arg-type]

    found = await adopt_from(launched.run_dir, launched.vm_id, timeout=BOUND)
    assert found.process is None
    # what was wrong is said (for the VM's status_reason), naming the file or the pid
    assert found.problem is not None and ("pid" in found.problem or "record" in found.problem)
    assert str(launched.run_dir) in found.problem or "pid" in found.problem
    assert stranger.poll() is None


class GarbageServer:
    """A listening socket at `path` that greets every client with garbage."""

    def __init__(self, path: Path) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(4)
        self.server.setblocking(False)
        self.clients: list[socket.socket] = []
        self.task = asyncio.get_running_loop().create_task(self._answer())

    async def _answer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            client, _ = await loop.sock_accept(self.server)
            self.clients.append(client)
            await loop.sock_sendall(client, b"\x00\xffnot QMP\n{]\n" * 64)

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        for client in [*self.clients, self.server]:
            client.close()


@pytest.mark.parametrize("kind", ["regular-file", "dead-socket", "garbage"])
async def test_a_broken_qmp_socket_leaves_the_qemu_held_and_endable(
    kind: str, qemus: Qemus
) -> None:
    launched = await running_qemu(qemus)
    path = launched.paths.qmp_socket
    clear(path)
    garbage = None
    if kind == "regular-file":
        path.write_text("not a socket\n")
    elif kind == "dead-socket":
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dead.bind(str(path))
        dead.close()  # bound, never listening: connections are refused
    else:
        garbage = GarbageServer(path)
    try:
        with pytest.raises(QemuUnresponsive) as caught:
            await adopt_from(launched.run_dir, launched.vm_id, timeout=1)
    finally:
        if garbage is not None:
            await garbage.close()
    held = caught.value.process
    qemus.handles.append(held)
    assert held.pid == launched.pid and not held.qmp.connected
    assert "QMP" in str(caught.value)
    # held through its pidfd: the ladder still ends it, with signals (QMP steps skipped)
    step = await shutdown(held, deadlines=ShutdownDeadlines(sigterm=3, sigkill=3))
    assert step is ShutdownStep.SIGTERM
    assert live_pids_with_uuid({launched.vm_id}) == []
    assert read_pid_file(launched.paths.pidfile).pid is None


# ---- the VM worker shows it on the VM -------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "said"),
    [
        ("launch.json", "zero", ["launch record", "re-adopted"]),
        ("launch.json", "stale-pid", ["launch record", "re-adopted"]),
        ("launch.json", "binary", ["launch record", "re-adopted"]),
        ("qmp.sock", "regular-file", ["QMP does not answer"]),
    ],
)
def test_the_vm_worker_reports_a_damaged_file_on_that_vm_and_adopts_its_qemu(
    name: str, kind: str, said: list[str], env: Env, stranger: subprocess.Popen[bytes]
) -> None:
    damaged, other = env.create("damaged", {"backend": "user"}), env.create("other")
    with env.db.unit_of_work() as session:  # the other one stays off (no guest boots here)
        row = session.get(Vm, other)
        assert row is not None
        row.power_state = "stopped"
    spec = LaunchSpec(
        vm_id=damaged,
        argv=[QEMU, "-machine", "none", "-accel", "tcg"],
        run_dir=env.run_dir / "vms" / damaged,
        netns=env.netns,
        sandbox=False,
    )

    async def start() -> QemuProcess:
        process = await launch(spec, timeout=BOUND)
        await process.close()  # the daemon that started it is gone; qemu runs on
        return process

    launched = asyncio.run(start())
    path = spec.run_dir / name
    if name == "qmp.sock":  # qemu's listening socket is gone: nobody can reach its monitor
        clear(path)
        path.write_text("not a socket\n")
    else:
        good = path.read_bytes()
        damage(path, kind, good, stranger.pid, with_pid(name, good))  # type: ignore[arg-type]

    worker = env.worker(deadlines=ShutdownDeadlines(powerdown=0, quit=3, sigterm=3, sigkill=3))
    row = env.wait_for(damaged, lambda r: r is not None and r.status == "running", timeout=BOUND)
    assert row is not None and row.pid == launched.pid
    for words in said:
        assert words in (row.status_reason or ""), row.status_reason
    stopped = env.wait_for(other, lambda r: r is not None and r.status == "stopped", timeout=BOUND)
    assert stopped is not None and stopped.status_reason is None
    assert stranger.poll() is None
    assert live_pids_with_uuid({damaged}) == [launched.pid]
    # held for real: the worker ends it (and the note goes with that change)
    env.desire(worker, damaged, "update", power_state="stopped")
    row = env.wait_for(damaged, lambda r: r is not None and r.status == "stopped", timeout=BOUND)
    assert row is not None and row.status_reason is None
    assert live_pids_with_uuid({damaged}) == []


@pytest.mark.timeout(60)  # a FIFO opened without O_NONBLOCK would block the event loop
@pytest.mark.parametrize("kind", SHAPES)
@pytest.mark.parametrize("name", ["qemu.log", "qemu.log.1", "console.log"])
async def test_whatever_the_qemu_user_left_in_the_run_directory_does_not_stop_a_launch(
    name: str, kind: str, qemus: Qemus, stranger: subprocess.Popen[bytes]
) -> None:
    spec = qemus.spec()
    spec.run_dir.mkdir(mode=0o700)
    damage(spec.run_dir / name, kind, b"old output\n", stranger.pid, lambda pid: pid.encode())
    process = await qemus.launch(spec, timeout=BOUND)
    assert await process.qmp.status() == "running"
    damage(spec.paths.qemu_log, kind, b"x\n", stranger.pid, lambda pid: pid.encode())
    assert "old output" not in process.output_tail()  # read without blocking or following
    process.send_signal(signal.SIGKILL)
    await process.wait(BOUND)
