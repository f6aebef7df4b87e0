"""qemu processes and QMP against real qemu (TCG, `-machine none`), each test in its own kvt-
namespace.

The `qemus` fixture tracks every qemu a test starts (launched, adopted, or started by a helper
process standing in for a daemon that was killed), kills leftovers by pid in teardown, asserts
that no qemu of the test's VMs is left, and prints their logs when the test failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.host.qemu import (
    LaunchRecord,
    LaunchSpec,
    QemuAlreadyRunning,
    QemuLaunchError,
    QemuProcess,
    QemuUnresponsive,
    RunPaths,
    ShutdownDeadlines,
    ShutdownStep,
    adopt,
    adopt_from,
    launch,
    shutdown,
)
from app.host.qmp import (
    EventHandler,
    Qmp,
    QmpCommandError,
    QmpDisconnected,
    QmpEvent,
    QmpTimeout,
)

QEMU = "qemu-system-x86_64"
NOBODY = 65534
REPO = Path(__file__).resolve().parents[2]


def status_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    raise KeyError(name)


def live_pids_with_uuid(vm_ids: set[str]) -> list[int]:
    """Live (non-zombie) processes whose command line has `-uuid` with one of `vm_ids`,
    read straight from /proc, independently of the code under test."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        for i, arg in enumerate(args[:-1]):
            if arg == b"-uuid" and args[i + 1].decode() in vm_ids and state != "Z":
                found.append(int(entry.name))
    return found


def kill_by_pid(pid: int, vm_ids: set[str]) -> None:
    """SIGKILL a leftover qemu of ours through a pidfd, after checking it is still ours."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if pid in live_pids_with_uuid(vm_ids):  # checked after the pidfd was opened
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    finally:
        os.close(pidfd)


class Qemus:
    """Factory and tracker of the qemus of one test."""

    def __init__(self, netns: str, base: Path) -> None:
        self.netns = netns
        self.base = base
        self.vm_ids: set[str] = set()
        self.handles: list[QemuProcess] = []

    def spec(self, *extra: str, user: int | None = None, sandbox: bool = False) -> LaunchSpec:
        vm_id = str(uuid.uuid4())
        self.vm_ids.add(vm_id)
        return LaunchSpec(
            vm_id=vm_id,
            argv=[QEMU, "-machine", "none", "-accel", "tcg", *extra],
            run_dir=self.base / vm_id,
            user=user,
            group=user,
            netns=self.netns,
            sandbox=sandbox,
        )

    async def launch(
        self, spec: LaunchSpec, timeout: float = 10.0, on_event: EventHandler | None = None
    ) -> QemuProcess:
        self.vm_ids.add(spec.vm_id)
        process = await launch(spec, timeout, on_event)
        self.handles.append(process)
        return process

    async def adopt(self, run_dir: Path, vm_id: str, timeout: float = 5.0) -> QemuProcess | None:
        process = await adopt(run_dir, vm_id, timeout)
        if process is not None:
            self.handles.append(process)
        return process

    async def cleanup(self) -> list[int]:
        """Kill what is left; return the pids that had to be killed."""
        killed = []
        for process in self.handles:
            with contextlib.suppress(Exception):
                if not process.exit and process.send_signal(signal.SIGKILL):
                    killed.append(process.pid)
                with contextlib.suppress(TimeoutError):
                    await process.wait(5)
            await process.close()
        for pid in live_pids_with_uuid(self.vm_ids):
            kill_by_pid(pid, self.vm_ids)
            killed.append(pid)
        deadline = time.monotonic() + 5
        while live_pids_with_uuid(self.vm_ids) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return killed

    def logs(self) -> str:
        out = []
        for run_dir in sorted(self.base.iterdir()):
            for name in ("qemu.log.1", "qemu.log", "console.log"):
                path = run_dir / name
                if path.is_file():
                    out.append(f"--- {path} ---\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(out)


@pytest.fixture
async def qemus(netns: str, request: pytest.FixtureRequest) -> AsyncIterator[Qemus]:
    # Reachable by an unprivileged qemu (pytest's tmp_path is under a 0700 directory).
    base = Path(tempfile.mkdtemp(prefix="kvt-qemu-", dir="/tmp"))
    base.chmod(0o711)
    tracker = Qemus(netns, base)
    try:
        yield tracker
    finally:
        killed = await tracker.cleanup()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(f"killed leftovers: {killed}\n{tracker.logs()}")
        shutil.rmtree(base, ignore_errors=True)
        assert live_pids_with_uuid(tracker.vm_ids) == [], "a qemu of this test is still running"


def netns_inode(name: str) -> int:
    return os.stat(f"/run/netns/{name}").st_ino


# ---- launch ---------------------------------------------------------------------------------


async def test_launch_answers_qmp_in_the_namespace(qemus: Qemus) -> None:
    events: list[QmpEvent] = []
    spec = qemus.spec()
    started = time.monotonic()
    process = await qemus.launch(spec, timeout=10, on_event=events.append)
    elapsed = time.monotonic() - started

    assert await process.qmp.status() == "running"
    assert await process.qmp.execute("query-uuid") == {"UUID": spec.vm_id}
    assert await process.qmp.execute("query-name") == {"name": spec.vm_id}
    assert elapsed < 5
    # where it runs and what it is
    assert os.stat(f"/proc/{process.pid}/ns/net").st_ino == netns_inode(qemus.netns)
    assert os.stat("/proc/self/ns/net").st_ino != netns_inode(qemus.netns)
    assert Path(f"/proc/{process.pid}/comm").read_text().strip() == f"kvm-{spec.vm_id[:8]}"
    assert os.getsid(process.pid) == process.pid  # its own session: outlives the daemon
    assert stat.S_IMODE(spec.run_dir.stat().st_mode) == 0o700
    record = LaunchRecord.read(process.paths)
    assert record is not None
    assert (record.pid, record.start_time) == (process.pid, process.start_time)
    assert process.paths.qmp_socket.is_socket() and process.paths.console_log.is_file()
    # events reach the callback and subscriptions
    with process.qmp.events({"STOP", "RESUME"}) as stream:
        await process.qmp.execute("stop")
        assert (await stream.get(timeout=2)).name == "STOP"
        await process.qmp.execute("cont")
        assert (await stream.get(timeout=2)).name == "RESUME"
    assert [e.name for e in events] == ["STOP", "RESUME"]
    assert events[0].timestamp > 0


async def test_launch_failure_carries_qemus_message_and_argv(qemus: Qemus) -> None:
    spec = qemus.spec("-device", "no-such-nic")
    with pytest.raises(QemuLaunchError) as caught:
        await qemus.launch(spec, timeout=10)
    error = caught.value
    assert "'no-such-nic' is not a valid device model name" in str(error)
    assert "'no-such-nic' is not a valid device model name" in error.output
    assert error.exit_code == 1
    assert error.argv[:7] == (QEMU, "-machine", "none", "-accel", "tcg", "-device", "no-such-nic")
    assert "-uuid" in error.argv and spec.vm_id in error.argv
    assert "argv: qemu-system-x86_64 -machine none" in str(error)
    # nothing adoptable is left behind, qemu's own output is
    assert not spec.paths.record.exists() and not spec.paths.pidfile.exists()
    assert "no-such-nic" in spec.paths.qemu_log.read_text()


async def test_launch_refuses_a_run_dir_the_qemu_user_cannot_reach(
    qemus: Qemus, tmp_path: Path
) -> None:
    vm_id = str(uuid.uuid4())
    qemus.vm_ids.add(vm_id)
    spec = LaunchSpec(vm_id=vm_id, argv=[QEMU], run_dir=tmp_path / "vm", user=NOBODY, group=NOBODY)
    with pytest.raises(QemuLaunchError, match="may not enter"):
        await qemus.launch(spec)
    assert live_pids_with_uuid({vm_id}) == []


def test_launch_spec_refuses_what_launch_owns() -> None:
    vm_id = str(uuid.uuid4())
    run_dir = Path("/run/kvmnetd/vms") / vm_id
    with pytest.raises(ValueError, match="-qmp"):
        LaunchSpec(vm_id, [QEMU, "-qmp", "stdio"], run_dir)
    with pytest.raises(ValueError, match="-daemonize"):
        LaunchSpec(vm_id, [QEMU, "--daemonize"], run_dir)
    with pytest.raises(ValueError, match="reserved"):
        LaunchSpec(vm_id, [QEMU, "-chardev", "null,id=kvmnetd-qmp"], run_dir)
    with pytest.raises(ValueError, match="UUID"):
        LaunchSpec(vm_id.upper(), [QEMU], run_dir)
    with pytest.raises(ValueError, match="both user and group"):
        LaunchSpec(vm_id, [QEMU], run_dir, user=NOBODY)
    with pytest.raises(ValueError, match="too long"):
        LaunchSpec(vm_id, [QEMU], Path("/" + "x" * 120))
    assert LaunchSpec(vm_id, [QEMU], run_dir).argv == (QEMU,)


async def test_launch_kills_a_qemu_whose_qmp_misses_the_deadline(qemus: Qemus) -> None:
    spec = qemus.spec()
    with pytest.raises(
        QemuLaunchError, match=re.escape("did not answer QMP within 0.001 s")
    ) as caught:
        await qemus.launch(spec, timeout=0.001)
    assert caught.value.exit_code is None and spec.vm_id in caught.value.argv
    assert live_pids_with_uuid({spec.vm_id}) == []  # killed (and collected) before the error
    assert not spec.paths.record.exists()


async def test_runs_as_nobody_under_the_strict_sandbox(qemus: Qemus) -> None:
    spec = qemus.spec(user=NOBODY, sandbox=True)
    process = await qemus.launch(spec, timeout=10)

    assert "-sandbox" in process.argv
    assert status_field(process.pid, "Uid").split() == [str(NOBODY)] * 4
    assert status_field(process.pid, "Gid").split() == [str(NOBODY)] * 4
    assert status_field(process.pid, "Groups") == ""
    assert status_field(process.pid, "Seccomp") == "2"  # a seccomp filter is active
    assert spec.run_dir.stat().st_uid == NOBODY
    assert await process.qmp.status() == "running"
    await process.qmp.execute("stop")
    assert await process.qmp.status() == "paused"


# ---- exit detection -------------------------------------------------------------------------


async def test_kill_9_of_our_child_is_seen_within_a_second(qemus: Qemus) -> None:
    process = await qemus.launch(qemus.spec(), timeout=10)
    paths = process.paths

    os.kill(process.pid, signal.SIGKILL)  # our unreaped child: its pid is still its own
    killed = time.monotonic()
    exit = await process.wait(timeout=1)
    latency = time.monotonic() - killed

    assert latency < 1, latency
    assert exit.returncode == -signal.SIGKILL and exit.reason == "killed by SIGKILL"
    assert not Path(f"/proc/{process.pid}").exists()  # collected: no zombie left
    await asyncio.wait_for(process.qmp.disconnected.wait(), 1)
    # a killed qemu leaves its socket and pidfile: removed, logs kept
    assert not paths.qmp_socket.exists() and not paths.pidfile.exists()
    assert not paths.record.exists() and paths.qemu_log.exists()
    assert await shutdown(process) == ShutdownStep.ALREADY_EXITED


HELPER = textwrap.dedent(
    """
    import asyncio, json, os, signal, sys
    from pathlib import Path
    from app.host.qemu import LaunchSpec, launch

    async def main() -> None:
        vm_id, argv, run_dir, netns = sys.argv[1:]
        spec = LaunchSpec(vm_id=vm_id, argv=json.loads(argv), run_dir=Path(run_dir),
                          netns=netns, sandbox=False)
        process = await launch(spec, timeout=10)
        print(json.dumps({"pid": process.pid, "start_time": process.start_time}), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # the daemon dies, its QMP connection open

    asyncio.run(main())
    """
)


async def launch_from_a_daemon_that_dies(qemus: Qemus) -> tuple[LaunchSpec, dict[str, int]]:
    """A qemu started by another process that is then killed: not our child."""
    spec = qemus.spec()
    args = [spec.vm_id, json.dumps(list(spec.argv)), str(spec.run_dir), qemus.netns]
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", HELPER, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    return spec, json.loads(result.stdout)


async def test_adopt_after_a_daemon_restart_checks_identity(qemus: Qemus) -> None:
    spec, launched = await launch_from_a_daemon_that_dies(qemus)
    pid = launched["pid"]
    assert int(status_field(pid, "PPid")) != os.getpid()

    # a wrong VM id, or a record whose start time is not the process's (a recycled pid)
    assert await qemus.adopt(spec.run_dir, str(uuid.uuid4())) is None
    record = LaunchRecord.read(spec.paths)
    assert record is not None and record.pid == pid
    dataclasses.replace(record, start_time=record.start_time + 1).write(spec.paths)
    # the record is not trusted, but the qemu is found by its own command line (-uuid and
    # this directory's pidfile); the record is written again from /proc
    found = await adopt_from(spec.run_dir, spec.vm_id)
    assert found.process is not None and found.process.pid == pid
    assert found.problem is not None and "recycled pid" in found.problem
    await found.process.close()
    assert LaunchRecord.read(spec.paths) == dataclasses.replace(
        record,
        launched_at=LaunchRecord.read(spec.paths).launched_at,  # type: ignore[union-attr]
    )

    process = await qemus.adopt(spec.run_dir, spec.vm_id)
    assert process is not None
    assert (process.pid, process.start_time) == (pid, launched["start_time"])
    assert not process.is_child
    assert await process.qmp.status() == "running"
    # it runs: no second copy, whatever the run directory
    with pytest.raises(QemuAlreadyRunning, match=f"pid {pid}"):
        await qemus.launch(spec)
    other_dir = LaunchSpec(spec.vm_id, spec.argv, spec.run_dir.with_name("elsewhere"))
    with pytest.raises(QemuAlreadyRunning):
        await qemus.launch(other_dir)

    # its exit is seen at once although it is not our child (nobody here can reap it)
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    exit = await process.wait(timeout=1)
    assert time.monotonic() - killed < 1
    assert exit.returncode is None and "not our child" in exit.reason
    assert await qemus.adopt(spec.run_dir, spec.vm_id) is None


async def test_adopt_refuses_a_pid_that_is_not_our_qemu(qemus: Qemus, tmp_path: Path) -> None:
    vm_id = str(uuid.uuid4())
    run_dir = tmp_path / "vm"
    run_dir.mkdir()
    stranger = subprocess.Popen(["sleep", "30"])
    try:
        facts = Path(f"/proc/{stranger.pid}/stat").read_text().rsplit(")", 1)[1].split()
        # everything the files can say is right; only /proc shows it is not a qemu of this VM
        (run_dir / "qemu.pid").write_text(f"{stranger.pid}\n")
        LaunchRecord(
            vm_id=vm_id,
            pid=stranger.pid,
            start_time=int(facts[19]),
            uid=os.getuid(),
            argv=("sleep", "30"),
            launched_at=time.time(),
        ).write(RunPaths(run_dir))
        assert await qemus.adopt(run_dir, vm_id) is None
        assert stranger.poll() is None  # refused, and left alone
    finally:
        stranger.kill()
        stranger.wait()


async def test_a_hung_qemu_is_not_adopted_but_can_still_be_ended(qemus: Qemus) -> None:
    launched = await qemus.launch(qemus.spec(), timeout=10)
    await launched.qmp.close()  # the old daemon's connection is gone ...
    launched.send_signal(signal.SIGSTOP)  # ... and qemu hangs

    with pytest.raises(QemuUnresponsive, match=re.escape("no greeting within 0.3 s")) as caught:
        await qemus.adopt(launched.run_dir, launched.vm_id, timeout=0.3)
    hung = caught.value.process
    assert hung.pid == launched.pid and not hung.qmp.connected

    started = time.monotonic()  # QMP steps skipped (powerdown would wait 30 s)
    step = await shutdown(hung, deadlines=ShutdownDeadlines(sigterm=0.2, sigkill=3))
    assert step == ShutdownStep.SIGKILL  # SIGTERM stays pending in a stopped process
    assert time.monotonic() - started < 1
    assert (await launched.wait(timeout=1)).returncode == -signal.SIGKILL


# ---- shutdown -------------------------------------------------------------------------------


async def test_shutdown_ladder_quit_ends_a_machine_without_acpi(qemus: Qemus) -> None:
    process = await qemus.launch(qemus.spec(), timeout=10)
    powerdowns: list[QmpEvent] = []
    deadlines = ShutdownDeadlines(powerdown=0.4, quit=5, sigterm=5, sigkill=5)

    with process.qmp.events({"POWERDOWN"}) as stream:
        started = time.monotonic()
        step = await shutdown(process, process.qmp, deadlines)
        elapsed = time.monotonic() - started
        powerdowns = [event async for event in stream]  # ends with the connection

    assert step == ShutdownStep.QUIT and str(step) == "quit"
    assert [event.name for event in powerdowns] == ["POWERDOWN"]  # it was asked, in vain
    assert 0.4 <= elapsed < 2.5, elapsed  # powerdown had its 0.4 s, quit ended it at once
    assert process.exit is not None and process.exit.returncode == 0
    assert not Path(f"/proc/{process.pid}").exists()
    assert not process.qmp.connected
    assert not process.paths.qmp_socket.exists() and not process.paths.pidfile.exists()


async def test_shutdown_ladder_honours_each_deadline_down_to_sigkill(qemus: Qemus) -> None:
    process = await qemus.launch(qemus.spec(), timeout=10)
    process.send_signal(signal.SIGSTOP)  # QMP hangs, SIGTERM stays pending
    deadlines = ShutdownDeadlines(powerdown=0.2, quit=0.2, sigterm=0.3, sigkill=3)

    started = time.monotonic()
    step = await shutdown(process, deadlines=deadlines)
    elapsed = time.monotonic() - started

    assert step == ShutdownStep.SIGKILL
    assert 0.7 <= elapsed < 2.5, elapsed  # 0.2 + 0.2 + 0.3, then SIGKILL at once
    assert process.exit is not None and process.exit.returncode == -signal.SIGKILL


# ---- QMP deadlines --------------------------------------------------------------------------


async def test_connecting_to_a_socket_nobody_answers_times_out(tmp_path: Path) -> None:
    path = tmp_path / "qmp.sock"
    with socket.socket(socket.AF_UNIX) as silent:
        silent.bind(str(path))
        silent.listen(1)  # the kernel accepts the connection; no greeting ever comes
        started = time.monotonic()
        with pytest.raises(QmpTimeout):
            await Qmp(path).connect(timeout=0.3)
        assert 0.3 <= time.monotonic() - started < 0.8

    with pytest.raises(QmpDisconnected):  # refused at once without retry
        await Qmp(path).connect(timeout=5)
    started = time.monotonic()
    with pytest.raises(QmpTimeout):  # retried until the deadline
        await Qmp(tmp_path / "missing.sock").connect(timeout=0.3, retry=True)
    assert time.monotonic() - started < 0.8
    with pytest.raises(QmpDisconnected):
        await Qmp(path).execute("query-status")


async def test_a_starting_qemu_that_hangs_up_during_the_greeting_is_tried_again(
    tmp_path: Path,
) -> None:
    """A monitor that ends the first session it accepted (as a qemu still starting up may):
    with retry the next session succeeds; without, the failure is reported at once. The
    server is a stand-in at the socket, speaking QMP's greeting and two answers."""
    sessions = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sessions
        sessions += 1
        if sessions % 2 == 1:  # hang up on every other session, before the greeting
            writer.close()
            return
        greeting = {"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0},
                                        "package": ""}, "capabilities": []}}  # fmt: skip
        writer.write(json.dumps(greeting).encode() + b"\r\n")
        while chunk := await reader.read(4096):  # one request per read (no newline after it)
            request = json.loads(chunk)
            answer = {"status": "running", "running": True, "singlestep": False}
            result = {} if request["execute"] == "qmp_capabilities" else answer
            writer.write(json.dumps({"return": result, "id": request.get("id")}).encode() + b"\r\n")
            await writer.drain()
        writer.close()

    path = tmp_path / "qmp.sock"
    server = await asyncio.start_unix_server(serve, path=str(path))
    try:
        qmp = Qmp(path)
        await qmp.connect(timeout=3, retry=True)
        assert sessions == 2 and await qmp.status(2) == "running"
        await qmp.close()
        with pytest.raises(QmpDisconnected):  # session 3 is hung up on: no retry, no wait
            await Qmp(path).connect(timeout=3)
    finally:
        server.close()
        await server.wait_closed()


async def test_a_hung_qemu_times_out_alone_and_recovers(qemus: Qemus) -> None:
    hung, healthy = [await qemus.launch(qemus.spec(), timeout=10) for _ in range(2)]
    hung.send_signal(signal.SIGSTOP)

    async def timed(qmp: Qmp, timeout: float) -> tuple[object, float]:
        started = time.monotonic()
        try:
            result: object = await qmp.status(timeout=timeout)
        except QmpTimeout as exc:
            result = exc
        return result, time.monotonic() - started

    (hung_result, hung_time), (healthy_result, healthy_time) = await asyncio.gather(
        timed(hung.qmp, 0.5), timed(healthy.qmp, 5)
    )
    assert isinstance(hung_result, QmpTimeout) and "query-status" in str(hung_result)
    assert 0.5 <= hung_time < 1.0, hung_time
    assert healthy_result == "running" and healthy_time < 0.5, healthy_time  # not held up

    hung.send_signal(signal.SIGCONT)  # the late answer is dropped; the connection still works
    assert await hung.qmp.status(timeout=2) == "running"
    with pytest.raises(QmpCommandError) as caught:
        await hung.qmp.execute("no-such-command", timeout=2)
    assert caught.value.error_class == "CommandNotFound"
