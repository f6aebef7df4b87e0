"""Stopping the real daemon is bounded, and what it started for itself ends with it.

Proven with the daemon as a subprocess in its own namespace and session:
- SIGTERM with an event stream open (`curl -N /v1/events`) and a `?wait=300` pending (a VM
  stop whose guest ignores the ACPI power button: SeaBIOS on a blank disk, ~0.1 s of CPU)
  ends within a few seconds; the stream gets a last `shutdown` event and ends, the wait
  answers 202 with the VM still `stopping` and Retry-After; the VM's qemu keeps running.
- A second SIGINT forces the exit while a request still holds its connection open (a body
  that never completes): exit status 128 + SIGINT at once, where one SIGINT waits for it.
- Stopped right after start, while the capability probe boots a guest kernel under TCG, the
  daemon leaves no process of its session, no child, and no temporary directory behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.helpers import E2EDaemon, ok, wait_for
from tests.guest.build import build_guest
from tests.readme_blocks import blocks_workdir

STOP_BOUND = 5.0  # seconds from SIGTERM to the daemon's exit, whatever clients hold open


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (state, ppid, pgrp, session, ...)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def session_members(sid: int) -> list[int]:
    """Live processes whose session id is `sid` (proc(5): field 6 of /proc/PID/stat)."""
    pids = []
    for entry in Path("/proc").iterdir():
        fields = _stat(int(entry.name)) if entry.name.isdigit() else None
        if fields is not None and int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, command name) of the live children of `pid` (proc(5): field 4 is the ppid)."""
    found = []
    for entry in Path("/proc").iterdir():
        fields = _stat(int(entry.name)) if entry.name.isdigit() else None
        if fields is not None and int(fields[1]) == pid and fields[0] != "Z":
            with contextlib.suppress(OSError):
                found.append((int(entry.name), (entry / "comm").read_text().strip()))
    return found


def _exit_within(proc: subprocess.Popen[bytes], seconds: float) -> float:
    started = time.monotonic()
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the daemon did not exit within {seconds}s of the signal") from None
    return time.monotonic() - started


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short work dir (QMP socket paths must fit a sockaddr_un) that the unprivileged
    qemu user can enter."""
    with blocks_workdir() as path:
        yield path


@contextlib.contextmanager
def daemon_in(netns: str, workdir: Path, **env: str) -> Iterator[E2EDaemon]:
    workdir.mkdir(parents=True, exist_ok=True)
    daemon = E2EDaemon(netns, workdir)
    daemon.extra_env = env
    try:
        yield daemon.start()
    except BaseException:
        print(f"--- daemon log ({daemon.log}) ---\n{daemon.logs()[-20000:]}")
        raise
    finally:
        daemon.kill()


class EventStream:
    """`curl -N /v1/events` in a thread: keeps the raw lines and sees the stream end."""

    def __init__(self, daemon: E2EDaemon) -> None:
        self.lines: list[str] = []
        self.ended = threading.Event()
        self.opened = threading.Event()
        self.error: BaseException | None = None

        def follow() -> None:
            try:
                with (
                    daemon.client(timeout=60) as client,
                    client.stream("GET", "/v1/events") as response,
                ):
                    self.opened.set()
                    for line in response.iter_lines():
                        self.lines.append(line)
            except BaseException as exc:  # reported by the test, not lost in the thread
                self.error = exc
            finally:
                self.ended.set()

        threading.Thread(target=follow, daemon=True).start()
        assert self.opened.wait(10), "the event stream did not open"


def test_sigterm_answers_streams_and_waits_and_ends_within_seconds(
    netns: str, tmp_path: Path, workdir: Path
) -> None:
    disk = workdir / "blank.img"  # readable by the unprivileged qemu user
    disk.write_bytes(bytes(1 << 20))  # SeaBIOS finds nothing to boot and idles
    disk.chmod(0o666)  # qemu (the unprivileged kvmnetd-qemu user) opens it read-write
    with daemon_in(netns, workdir) as daemon, daemon.client(timeout=60) as client:
        vm = ok(
            client.post(
                "/v1/vms?wait=30",
                json={
                    "name": "deaf",
                    "memory_mib": 64,
                    "accelerator": "tcg",
                    "boot": {"disk": str(disk)},
                },
            ),
            201,
        )
        assert vm["status"] == "running", vm
        stream = EventStream(daemon)
        answer: dict[str, httpx.Response] = {}

        def stop_and_wait() -> None:
            with daemon.client(timeout=60) as waiter:
                answer["stop"] = waiter.post("/v1/vms/deaf/stop?wait=300")

        threading.Thread(target=stop_and_wait, daemon=True).start()
        wait_for(
            lambda: ok(client.get("/v1/vms/deaf"), 200)["status"] == "stopping",
            10,
            "the VM to be stopping (its guest ignores the power button)",
        )
        time.sleep(0.5)  # the wait is pending now, in the middle of the powerdown step
        assert "stop" not in answer
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        took = _exit_within(daemon.proc, STOP_BOUND)

    assert daemon.proc.returncode == 0, daemon.logs()[-3000:]
    assert stream.ended.wait(2), "the event stream did not end"
    assert stream.error is None, stream.error
    assert "event: shutdown" in stream.lines, stream.lines[-10:]
    last = stream.lines[-4:]  # the final event, then the stream ends
    assert last[0] == "event: shutdown" and last[2:] == ["retry: 2000", ""], stream.lines
    stop = answer.get("stop")
    assert stop is not None, "the pending ?wait= got no answer"
    assert stop.status_code == 202, stop.text
    assert stop.json()["status"] == "stopping", stop.json()
    assert stop.headers["retry-after"] == "5"
    assert stop.headers["operation-location"].startswith("/v1/operations/")
    assert _alive(vm["pid"]), "the VM's qemu must keep running when the daemon stops"
    print(f"stopped in {took:.2f}s")


def _held_request(daemon: E2EDaemon) -> socket.socket:
    """A POST whose body never completes: the request holds its connection open."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(daemon.socket))
    sock.sendall(
        b"POST /v1/bridges HTTP/1.1\r\nHost: kvmnetd\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{"
    )
    return sock


def test_second_sigint_forces_the_exit(netns: str, tmp_path: Path) -> None:
    with daemon_in(netns, tmp_path / "d") as daemon, _held_request(daemon):
        assert daemon.proc is not None
        time.sleep(0.3)  # the request is being read
        daemon.proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        assert daemon.proc.poll() is None, "the held request ended the graceful stop at once?"
        daemon.proc.send_signal(signal.SIGINT)
        took = _exit_within(daemon.proc, 1.5)
        assert daemon.proc.returncode == 128 + signal.SIGINT, daemon.logs()[-3000:]
        assert "SIGINT again: forcing the exit" in daemon.logs()
        print(f"forced in {took:.2f}s")


@pytest.fixture
def guest_kernel() -> Path:
    return build_guest().kernel


def test_helpers_and_temp_dirs_end_with_the_daemon(
    netns: str, tmp_path: Path, guest_kernel: Path
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    workdir = tmp_path / "d"
    with daemon_in(
        netns, workdir, KVMNETD_PROBE_KERNEL=str(guest_kernel), TMPDIR=str(temp)
    ) as daemon:
        assert daemon.proc is not None
        pid = daemon.proc.pid
        probe = wait_for(
            lambda: [p for p, comm in children(pid) if comm.startswith("qemu")],
            20,
            "the capability probe's qemu",
        )
        daemon.proc.send_signal(signal.SIGTERM)
        _exit_within(daemon.proc, STOP_BOUND)

    probes_left = [p for p in probe if _alive(p)]
    session_left = session_members(pid)
    for p in {*probes_left, *session_left}:  # never leave them running, even on failure
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    assert not probes_left, f"the probe's qemu {probes_left} outlived the daemon"
    assert not session_left, f"processes of the daemon's session outlived it: {session_left}"
    assert list(temp.iterdir()) == [], "temporary files outlived the daemon"
    assert not (daemon.run_dir / "probe").exists(), "the probe's scratch dir outlived it"
