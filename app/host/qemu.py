"""qemu processes: launch, identity, exit detection, re-adoption and the shutdown ladder.

One run directory per VM (0700, owned by the user qemu runs as) holds everything of one qemu:
  qemu.pid     written and locked by qemu itself: a second copy of the same VM dies at once
               with "Cannot lock pid file", before it touches the QMP socket;
  qmp.sock     the QMP monitor (app.host.qmp);
  console.log  the guest's serial port;
  qemu.log     qemu's own stdout and stderr (the previous run's is kept as qemu.log.1);
  launch.json  the daemon's record of what it started (LaunchRecord), written right after
               the spawn, before anything is awaited.

Identity: a pid alone is never trusted. A process is ours when /proc/PID/cmdline is exactly
the argv the record holds, carries `-uuid VM_ID` and this directory's pidfile, and its start
time (/proc/PID/stat field 22) is the recorded one: a recycled pid belongs to a process that
started later. Every process is held through a pidfd opened *before* that check and confirmed
alive after it, so the check and every later signal concern that very process even if it
exits and its pid is reused meanwhile (signals go through pidfd_send_signal).

Exit detection never depends on reaping: a pidfd becomes readable when the process exits,
zombie or not, so a re-adopted qemu that is not our child is seen at once too (PID 1 on these
machines reaps orphans only every ~1.7 s). Only our own child's exit status is known; an
adopted qemu's status goes to its real parent, and the tail of qemu.log is the evidence.

Network namespace: a qemu for a named namespace is forked from a short-lived thread that
entered it; the child inherits the forking thread's namespace. `ip netns exec` cannot start
an unprivileged qemu: Popen drops privileges before exec, and `ip` running as that user may
not setns.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
import select
import shlex
import signal
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from app.domain.qemu_argv import qemu_value
from app.host.errors import HostError
from app.host.files import FileProblem, read_bounded, remove
from app.host.netns import enter_for_this_thread
from app.host.procs import (
    Held,
    ProcFacts,
    find,
    hold,
    parse_pid,
    proc_facts,
    read_pid_file,
)
from app.host.qmp import EventHandler, Qmp, QmpDisconnected, QmpError

log = logging.getLogger(__name__)

SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
QMP_CHARDEV = "kvmnetd-qmp"
CONSOLE_CHARDEV = "kvmnetd-console"
# Options this module adds (or that would defeat it); the argv builder must not pass them.
RESERVED_OPTIONS = frozenset(
    {
        "-qmp",
        "-qmp-pretty",
        "-monitor",
        "-mon",
        "-pidfile",
        "-serial",
        "-name",
        "-uuid",
        "-daemonize",
        "-sandbox",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "-runas",
        "-chroot",
    }
)
UNIX_PATH_MAX = 107  # sun_path holds 108 bytes including the terminating NUL
OUTPUT_TAIL_BYTES = 8192
OUTPUT_TAIL_LINES = 20
LOG_MODE = 0o640
QEMU_UMASK = 0o077
REAP_GRACE = 5.0  # seconds to wait for a launch we abandon to be gone after SIGKILL
EXIT_GRACE = 0.5  # seconds for an exit to show on the pidfd once QMP hung up


# ---- errors ---------------------------------------------------------------------------------


class QemuError(HostError):
    """Base of this module's errors."""


class QemuLaunchError(QemuError):
    """qemu did not come up: it exited (exit_code), could not be started, or its QMP did not
    answer in time. Carries the full argv and the tail of qemu's own output."""

    def __init__(
        self,
        vm_id: str,
        problem: str,
        argv: Sequence[str],
        exit_code: int | None = None,
        output: str = "",
    ) -> None:
        self.vm_id = vm_id
        self.problem = problem
        self.argv = tuple(argv)
        self.exit_code = exit_code
        self.output = output
        text = f"qemu for VM {vm_id} {problem}"
        if exit_code is not None:
            text += f" ({describe_returncode(exit_code)})"
        if output:
            text += f": {output}"
        super().__init__(f"{text}\nargv: {shlex.join(self.argv)}")


class QemuAlreadyRunning(QemuLaunchError):
    """A qemu of this VM already runs from this run directory: never start a second copy."""

    def __init__(self, vm_id: str, pid: int, argv: Sequence[str]) -> None:
        super().__init__(vm_id, f"already runs as pid {pid}", argv)
        self.pid = pid


class QemuUnresponsive(QemuError):
    """adopt(): our qemu is alive (identity checked) but its QMP did not answer. `process`
    is a handle without QMP: shutdown() can still end it with signals."""

    def __init__(self, process: QemuProcess, reason: str, problem: str | None = None) -> None:
        super().__init__(f"qemu for VM {process.vm_id} (pid {process.pid}): {reason}")
        self.process = process
        self.problem = problem  # what adopt_from() found wrong with the run directory's files


class QemuShutdownError(QemuError):
    """Even SIGKILL did not end qemu within its deadline (a process stuck in the kernel)."""

    def __init__(self, process: QemuProcess, state: str) -> None:
        super().__init__(
            f"qemu for VM {process.vm_id} (pid {process.pid}) survived SIGKILL; state {state}"
        )
        self.process = process
        self.state = state


# ---- what to launch -------------------------------------------------------------------------


@dataclass(frozen=True)
class RunPaths:
    """The files of one VM's run directory."""

    run_dir: Path

    @property
    def qmp_socket(self) -> Path:
        return self.run_dir / "qmp.sock"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "qemu.pid"

    @property
    def console_log(self) -> Path:
        return self.run_dir / "console.log"

    @property
    def qemu_log(self) -> Path:
        return self.run_dir / "qemu.log"

    @property
    def previous_qemu_log(self) -> Path:
        return self.run_dir / "qemu.log.1"

    @property
    def record(self) -> Path:
        return self.run_dir / "launch.json"


@dataclass(frozen=True)
class LaunchSpec:
    """One qemu to start. `argv` is the binary plus machine, devices and netdevs (built
    elsewhere) without the options in RESERVED_OPTIONS, which launch() adds."""

    vm_id: str  # a UUID in canonical form; the VM's identity (-uuid)
    argv: Sequence[str]
    run_dir: Path
    user: int | None = None  # run qemu as this uid/gid; None: as the daemon
    group: int | None = None
    netns: str | None = None  # None: the calling thread's network namespace
    sandbox: bool = True  # qemu's seccomp sandbox (needs qemu started as `user`, not -runas)
    name: str | None = None  # guest name qemu reports (query-name); default: vm_id
    pass_fds: tuple[int, ...] = ()  # descriptors qemu inherits (e.g. taps: -netdev tap,fd=)

    def __post_init__(self) -> None:
        object.__setattr__(self, "argv", tuple(self.argv))
        if str(uuid.UUID(self.vm_id)) != self.vm_id:
            raise ValueError(f"vm_id {self.vm_id!r} is not a UUID in canonical form")
        if not self.argv or not self.argv[0]:
            raise ValueError("argv needs at least the qemu binary")
        clashes = sorted(RESERVED_OPTIONS.intersection(_option_names(self.argv[1:])))
        if clashes:
            raise ValueError(f"argv must not contain {', '.join(clashes)}: launch() adds them")
        if any("id=kvmnetd-" in arg for arg in self.argv):
            raise ValueError("ids starting with kvmnetd- are reserved")
        if (self.user is None) != (self.group is None):
            raise ValueError("give both user and group, or neither (qemu would keep gid 0)")
        if not self.run_dir.is_absolute():
            raise ValueError(f"run_dir {self.run_dir} must be absolute")
        socket_path = RunPaths(self.run_dir).qmp_socket
        if len(os.fsencode(socket_path)) > UNIX_PATH_MAX:
            raise ValueError(f"{socket_path} is too long for a unix socket")

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.run_dir)


def _option_names(args: Sequence[str]) -> set[str]:
    # qemu accepts -opt and --opt alike
    return {"-" + arg.lstrip("-") for arg in args if arg.startswith("-")}


def process_name(vm_id: str) -> str:
    """The qemu thread name (/proc/PID/comm, at most 15 chars): kvm-<first 8 hex digits>."""
    return f"kvm-{vm_id[:8]}"


def launch_argv(spec: LaunchSpec) -> list[str]:
    """The full command: the spec's argv plus identity, run-directory files and hardening."""
    paths = spec.paths
    argv = [
        *spec.argv,
        "-name",
        f"guest={qemu_value(spec.name or spec.vm_id)},process={process_name(spec.vm_id)}",
        "-uuid",
        spec.vm_id,
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-pidfile",
        str(paths.pidfile),
        "-chardev",
        f"socket,id={QMP_CHARDEV},path={qemu_value(str(paths.qmp_socket))},server=on,wait=off",
        "-mon",
        f"chardev={QMP_CHARDEV},mode=control",
        "-chardev",
        f"file,id={CONSOLE_CHARDEV},path={qemu_value(str(paths.console_log))}",
        "-serial",
        f"chardev:{CONSOLE_CHARDEV}",
    ]
    if spec.sandbox:
        argv += ["-sandbox", SANDBOX]
    return argv


def _option(argv: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(argv[:-1]):
        if arg == name:
            return argv[i + 1]
    return None


def _runs_this_vm(facts: ProcFacts, paths: RunPaths, vm_id: str) -> bool:
    """The process is a qemu of this VM started for this run directory."""
    return (
        _option(facts.argv, "-uuid") == vm_id
        and _option(facts.argv, "-pidfile") == str(paths.pidfile)
        and facts.state != "Z"
    )


RECORD_LIMIT = 1 << 16  # bytes of launch.json


def output_tail(path: Path, lines: int = OUTPUT_TAIL_LINES) -> str:
    """The last lines of a log (qemu's own output), stripped; empty when there is none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO would block the event loop
            os.close(fd)
            return ""
        with os.fdopen(fd, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - OUTPUT_TAIL_BYTES))
            data = f.read().decode(errors="replace")
    except OSError as exc:  # missing, or a link planted by the qemu user
        log.debug("no output tail from %s: %s", path, exc)
        return ""
    return "\n".join(data.strip().splitlines()[-lines:])


# ---- the launch record ----------------------------------------------------------------------


@dataclass(frozen=True)
class LaunchRecord:
    """What the daemon started, kept in the run directory for a restarted daemon."""

    vm_id: str
    pid: int
    start_time: int
    uid: int
    argv: tuple[str, ...]
    launched_at: float  # wall clock, for people reading the file

    def write(self, paths: RunPaths) -> None:
        """Atomically (a temporary file renamed over the old record)."""
        tmp = paths.record.with_name(f".{paths.record.name}.{os.getpid()}")
        remove(tmp)
        if paths.record.is_dir() and not paths.record.is_symlink():
            remove(paths.record)  # os.replace cannot replace a directory
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f)
        os.replace(tmp, paths.record)

    @classmethod
    def read(cls, paths: RunPaths) -> LaunchRecord | None:
        """None when missing or unreadable (then nothing is adopted from that directory)."""
        record = cls.load(paths)
        return record if isinstance(record, LaunchRecord) else None

    @classmethod
    def load(cls, paths: RunPaths) -> LaunchRecord | str | None:
        """The record; None when there is none; why it cannot be used when it is damaged
        (the run directory belongs to the qemu user: read through app.host.files, no link
        followed, at most RECORD_LIMIT bytes)."""
        try:
            data = read_bounded(paths.record, RECORD_LIMIT)
            if data is None:
                return None
            raw = json.loads(data)
            record = cls(
                vm_id=str(raw["vm_id"]),
                pid=_whole(raw["pid"]),
                start_time=_whole(raw["start_time"]),
                uid=_whole(raw["uid"]),
                argv=tuple(_text(arg) for arg in raw["argv"]),
                launched_at=float(raw["launched_at"]),
            )
            parse_pid(str(record.pid).encode())
        except FileProblem as exc:
            return f"launch record {exc}"
        except (ValueError, KeyError, TypeError, OverflowError) as exc:
            log.warning("unusable launch record %s: %s", paths.record, exc)
            return f"launch record {paths.record} is damaged ({type(exc).__name__}: {exc})"[:300]
        return record


def _whole(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is not a whole number")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string")
    return value


def _identity_problem(facts: ProcFacts | None, record: LaunchRecord, paths: RunPaths) -> str | None:
    """Why the process is not the qemu the record describes; None when it is."""
    if facts is None:
        return "no such process"
    if facts.argv != record.argv:
        return f"its command line is not the recorded qemu: {shlex.join(facts.argv)[:200]}"
    if not _runs_this_vm(facts, paths, record.vm_id):
        return "it is not a live qemu of this VM and run directory"
    if facts.start_time != record.start_time:
        return (
            f"it started at tick {facts.start_time}, the recorded qemu at {record.start_time}"
            " (recycled pid)"
        )
    if facts.uid != record.uid:
        return f"it runs as uid {facts.uid}, the recorded qemu as {record.uid}"
    return None


def remove_runtime_files(paths: RunPaths, pid: int) -> None:
    """Remove the pidfile, socket and record of the qemu `pid` after it has exited (qemu
    removes the first two itself when it exits cleanly, not when killed). Nothing is removed
    when the record names another process: a newer launch owns those files."""
    record = LaunchRecord.read(paths)
    if record is not None and record.pid != pid:
        return
    for path in (paths.qmp_socket, paths.pidfile, paths.record):
        remove(path)


# ---- a running qemu -------------------------------------------------------------------------


def describe_returncode(code: int | None) -> str:
    if code is None:
        return "exit status unknown: not our child (re-adopted)"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@dataclass(frozen=True)
class QemuExit:
    """How a qemu ended, as far as this process can know."""

    vm_id: str
    pid: int
    returncode: int | None  # negative: killed by that signal; None: not our child
    output_tail: str  # the last lines of qemu.log
    detected_at: float = field(default_factory=time.monotonic)

    @property
    def reason(self) -> str:
        return describe_returncode(self.returncode)


class QemuProcess:
    """A live qemu held through a pidfd: our child (from launch) or re-adopted (from adopt).

    Exit watching binds to the event loop of the first wait(); close() stops watching and
    disconnects QMP without stopping qemu (the daemon exits, the VM keeps running)."""

    def __init__(
        self,
        *,
        vm_id: str,
        paths: RunPaths,
        pid: int,
        pidfd: int,
        start_time: int,
        argv: Sequence[str],
        qmp: Qmp,
        child: subprocess.Popen[bytes] | None = None,
    ) -> None:
        self.vm_id = vm_id
        self.paths = paths
        self.pid = pid
        self.start_time = start_time
        self.argv = tuple(argv)
        self.qmp = qmp
        self._pidfd = pidfd
        self._child = child
        self._exit: QemuExit | None = None
        self._future: asyncio.Future[QemuExit] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        kind = "child" if self._child is not None else "adopted"
        return f"QemuProcess(vm={self.vm_id}, pid={self.pid}, {kind}, exit={self._exit})"

    @property
    def run_dir(self) -> Path:
        return self.paths.run_dir

    @property
    def is_child(self) -> bool:
        return self._child is not None

    @property
    def exit(self) -> QemuExit | None:
        """How it ended, once an exit was seen (by wait())."""
        return self._exit

    def exited(self) -> bool:
        """True once the process has exited (zombie included); never blocks."""
        if self._exit is not None:
            return True
        if self._pidfd < 0:
            raise QemuError(f"{self!r} is closed")
        poller = select.poll()
        poller.register(self._pidfd, select.POLLIN)
        return bool(poller.poll(0))

    async def wait(self, timeout: float | None = None) -> QemuExit:
        """The exit, as soon as the kernel reports it; TimeoutError after `timeout` s."""
        if self._exit is not None:
            return self._exit
        future = self.watch()
        async with asyncio.timeout(timeout):
            return await asyncio.shield(future)

    def watch(self) -> asyncio.Future[QemuExit]:
        """Start watching for the exit on the running loop (launch and adopt do; idempotent).
        The exit is then recorded, and the run directory cleaned, even if nobody waits."""
        if self._future is None:
            if self._pidfd < 0:
                raise QemuError(f"{self!r} is closed")
            self._loop = asyncio.get_running_loop()
            self._future = self._loop.create_future()
            self._loop.add_reader(self._pidfd, self._on_exit)  # readable at once if it has exited
        return self._future

    def _on_exit(self) -> None:
        # A loop callback: whatever fails here, the waiters must get the exit.
        assert self._loop is not None and self._future is not None
        self._loop.remove_reader(self._pidfd)
        try:
            returncode = self._reap()
        except OSError as exc:
            log.warning("could not collect qemu pid %d: %s", self.pid, exc)
            returncode = None
        self._exit = QemuExit(self.vm_id, self.pid, returncode, output_tail(self.paths.qemu_log))
        try:
            remove_runtime_files(self.paths, self.pid)
        except OSError as exc:
            log.warning("could not clean %s: %s", self.paths.run_dir, exc)
        log.info("qemu for VM %s (pid %d) exited: %s", self.vm_id, self.pid, self._exit.reason)
        if not self._future.done():
            self._future.set_result(self._exit)

    def _reap(self) -> int | None:
        """Our child's exit status (collecting the zombie); None for an adopted qemu."""
        if self._child is None:
            return None
        try:
            result = os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:  # someone else collected it
            return None
        if result is None:
            return self._child.poll()
        code = result.si_status if result.si_code == os.CLD_EXITED else -result.si_status
        self._child.returncode = code  # Popen knows it is done (no "still running" warning)
        return code

    def send_signal(self, sig: int) -> bool:
        """Signal this very process (through its pidfd, never a bare pid); False when it has
        already exited."""
        if self.exited():
            return False
        try:
            signal.pidfd_send_signal(self._pidfd, sig)
        except ProcessLookupError:
            return False
        return True

    def output_tail(self, lines: int = OUTPUT_TAIL_LINES) -> str:
        return output_tail(self.paths.qemu_log, lines)

    async def close(self) -> None:
        """Disconnect QMP and stop watching; qemu keeps running."""
        await self.qmp.close()
        self._release()

    def _release(self) -> None:
        if self._pidfd < 0:
            return
        if self._child is not None and self._exit is None:
            _detached.append(self._child)
        if self._future is not None and not self._future.done():
            assert self._loop is not None
            self._loop.remove_reader(self._pidfd)
            self._future.cancel()
        os.close(self._pidfd)
        self._pidfd = -1


# Our children whose handle was closed while they ran (the daemon stops; qemu outlives it).
# Holding their Popen keeps its finalizer from warning "still running"; launch() collects
# the ones that ended meanwhile.
_detached: list[subprocess.Popen[bytes]] = []


def _reap_detached() -> None:
    _detached[:] = [child for child in _detached if child.poll() is None]


def reap_detached() -> None:
    """Collect our children that ended after their handle was closed: when a VM worker stops
    and another one in the same process takes over (in-process tests), the qemu it adopts is
    still our child, and its zombie would otherwise wait for the next launch()."""
    _reap_detached()


# ---- launch ---------------------------------------------------------------------------------


async def launch(
    spec: LaunchSpec, timeout: float = 10.0, on_event: EventHandler | None = None
) -> QemuProcess:
    """Start qemu for `spec` and return once its QMP answers query-status, within `timeout`
    seconds. The returned process holds the connected QMP (`process.qmp`, events from the
    first moment to `on_event`). Raises QemuLaunchError (argv, exit code, qemu's output);
    a qemu that was started but did not come up is killed before that."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    paths = spec.paths
    argv = launch_argv(spec)
    _reap_detached()
    _prepare_run_dir(spec, argv)
    child = _spawn(spec, argv)
    process = _adopt_child(spec, argv, child, on_event)
    process.watch()
    try:
        await _wait_ready(process, argv, deadline, timeout)
    except BaseException:
        await _abandon(process)
        raise
    log.info("qemu for VM %s runs as pid %d (%s)", spec.vm_id, process.pid, paths.run_dir)
    return process


def _prepare_run_dir(spec: LaunchSpec, argv: Sequence[str]) -> None:
    """The run directory exists, is 0700 and the qemu user's; no copy of this VM runs from
    it; qemu.log is fresh (the previous one kept)."""
    paths = spec.paths
    spec.run_dir.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        spec.run_dir.mkdir(mode=0o700)
    fd = os.open(spec.run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        uid = -1 if spec.user is None else spec.user
        gid = -1 if spec.group is None else spec.group
        os.fchown(fd, uid, gid)
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    # files an earlier qemu of this VM made, maybe as another user (run_as changed): the
    # new one must be able to open them again
    for path in (paths.console_log, paths.pidfile):
        _chown_own_file(path, uid, gid)
    _check_reachable(spec, argv)
    running = find_running(spec.vm_id)
    if running:
        raise QemuAlreadyRunning(spec.vm_id, running[0], argv)
    # whatever the qemu user left where our files go (a directory, a FIFO, a link) goes
    remove(paths.previous_qemu_log)
    for path in (paths.qemu_log, paths.console_log):
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISREG(path.lstat().st_mode):
                remove(path)
    with contextlib.suppress(FileNotFoundError):
        os.replace(paths.qemu_log, paths.previous_qemu_log)


def _chown_own_file(path: Path, uid: int, gid: int) -> None:
    """Give a regular file of the run directory to the qemu user; a link planted there is
    removed, never followed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    except OSError:  # ELOOP: a symbolic link
        path.unlink(missing_ok=True)
        return
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.fchown(fd, uid, gid)
    finally:
        os.close(fd)


def _check_reachable(spec: LaunchSpec, argv: Sequence[str]) -> None:
    """An unprivileged qemu must be able to walk down to its run directory."""
    if spec.user in (None, 0):
        return
    for directory in spec.run_dir.parents:
        st = directory.stat()
        if st.st_uid == spec.user:
            bit = stat.S_IXUSR
        elif spec.group is not None and st.st_gid == spec.group:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            raise QemuLaunchError(
                spec.vm_id,
                f"cannot start as uid {spec.user}: it may not enter {directory} "
                f"(mode {stat.filemode(st.st_mode)})",
                argv,
            )


def find_running(vm_id: str) -> list[int]:
    """Pids of live processes whose command line carries `-uuid VM_ID`, from any run
    directory. qemu's pidfile lock stops a second copy only in the same directory, and only
    while the first one's pidfile is there."""

    def identity(facts: ProcFacts) -> str | None:
        return None if _option(facts.argv, "-uuid") == vm_id else "another process"

    return [facts.pid for facts in find(identity)]


def _open_log(paths: RunPaths) -> int:
    # O_EXCL|O_NOFOLLOW: never write through a file or link the qemu user left there
    remove(paths.qemu_log)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_APPEND | os.O_CLOEXEC
    return os.open(paths.qemu_log, flags, LOG_MODE)


def _qemu_env() -> dict[str, str]:
    # Nothing of the daemon's environment (tokens, proxies) leaks into the guest's process.
    return {"PATH": os.environ.get("PATH", os.defpath), "LC_ALL": "C"}


def _spawn(spec: LaunchSpec, argv: Sequence[str]) -> subprocess.Popen[bytes]:
    """Fork and exec qemu (synchronously: no await between the spawn and the record, so a
    cancelled launch can never lose a running child)."""
    log_fd = _open_log(spec.paths)
    dropping = spec.user is not None or spec.group is not None
    result: list[subprocess.Popen[bytes]] = []
    errors: list[Exception] = []

    def run() -> None:
        try:
            enter_for_this_thread(spec.netns)
            result.append(
                subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log_fd,
                    stderr=subprocess.STDOUT,
                    cwd=spec.run_dir,
                    env=_qemu_env(),
                    start_new_session=True,  # qemu outlives the daemon and its signals
                    umask=QEMU_UMASK,
                    user=spec.user,
                    group=spec.group,
                    extra_groups=[] if dropping else None,
                    pass_fds=spec.pass_fds,
                )
            )
        except Exception as exc:  # handed to the caller below
            errors.append(exc)

    try:
        if spec.netns is None:
            run()
        else:  # a thread of its own enters the namespace; ours stays where it is
            thread = threading.Thread(target=run, name=f"spawn-{spec.vm_id[:8]}")
            thread.start()
            thread.join()
    finally:
        os.close(log_fd)
    if errors:
        raise QemuLaunchError(spec.vm_id, f"could not be started: {errors[0]}", argv) from errors[0]
    return result[0]


def _adopt_child(
    spec: LaunchSpec,
    argv: Sequence[str],
    child: subprocess.Popen[bytes],
    on_event: EventHandler | None,
) -> QemuProcess:
    # An unreaped child keeps its pid: the pidfd and /proc facts are surely about it.
    pidfd = os.pidfd_open(child.pid)
    facts = proc_facts(child.pid)
    assert facts is not None  # at worst a zombie, which still has its /proc entry
    paths = spec.paths
    LaunchRecord(
        vm_id=spec.vm_id,
        pid=child.pid,
        start_time=facts.start_time,
        uid=os.getuid() if spec.user is None else spec.user,
        argv=tuple(argv),
        launched_at=time.time(),
    ).write(paths)
    qmp = Qmp(paths.qmp_socket, name=process_name(spec.vm_id), on_event=on_event)
    return QemuProcess(
        vm_id=spec.vm_id,
        paths=paths,
        pid=child.pid,
        pidfd=pidfd,
        start_time=facts.start_time,
        argv=argv,
        qmp=qmp,
        child=child,
    )


async def _wait_ready(
    process: QemuProcess, argv: Sequence[str], deadline: float, timeout: float
) -> None:
    """QMP answers before the deadline, or QemuLaunchError with the evidence."""
    loop = asyncio.get_running_loop()

    async def answer() -> str:
        await process.qmp.connect(max(0.0, deadline - loop.time()), retry=True)
        return await process.qmp.status(max(0.0, deadline - loop.time()))

    ready = asyncio.ensure_future(answer())
    exited = asyncio.ensure_future(process.wait())
    try:
        await asyncio.wait(
            {ready, exited},
            timeout=max(0.0, deadline - loop.time()),
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        for task in (ready, exited):
            task.cancel()
        await asyncio.gather(ready, exited, return_exceptions=True)
    failure = ready.exception() if ready.done() and not ready.cancelled() else None
    if ready.done() and not ready.cancelled() and failure is None:
        log.debug("qemu for VM %s is %s", process.vm_id, ready.result())
        return
    if isinstance(failure, QmpDisconnected) or process.exited():
        # QMP hung up: qemu is probably dying; give the pidfd a moment to say so.
        with contextlib.suppress(TimeoutError):
            await process.wait(timeout=EXIT_GRACE)
    if process.exit is not None:
        raise QemuLaunchError(
            process.vm_id,
            "exited while starting",
            argv,
            process.exit.returncode,
            process.exit.output_tail,
        )
    problem = f"did not answer QMP within {timeout:g} s"
    if failure is not None and not isinstance(failure, TimeoutError):
        problem = f"QMP failed: {failure}"
    raise QemuLaunchError(process.vm_id, problem, argv, output=process.output_tail())


async def _abandon(process: QemuProcess) -> None:
    """A launch that failed: make sure its qemu is gone, collected, and forgotten."""
    try:
        if process.send_signal(signal.SIGKILL):
            log.warning("killed qemu for VM %s (pid %d): launch failed", process.vm_id, process.pid)
        with contextlib.suppress(TimeoutError):
            await process.wait(REAP_GRACE)
    finally:
        await process.close()


# ---- adopt ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Adoption:
    """What adopt_from() found: the qemu (or None), and what was wrong with the run
    directory's files (launch record, pidfile), whether that was healed or not."""

    process: QemuProcess | None
    problem: str | None = None


async def adopt(
    run_dir: Path, vm_id: str, timeout: float = 5.0, on_event: EventHandler | None = None
) -> QemuProcess | None:
    """adopt_from() without the account of damaged files."""
    return (await adopt_from(run_dir, vm_id, timeout, on_event)).process


async def adopt_from(
    run_dir: Path, vm_id: str, timeout: float = 5.0, on_event: EventHandler | None = None
) -> Adoption:
    """The qemu a previous daemon launched for `vm_id` from `run_dir`, if it still runs:
    /proc shows the recorded qemu (command line, start time, uid) and its QMP answers within
    `timeout`. When the launch record is missing, damaged or names another process, a live
    qemu whose own command line carries `-uuid VM_ID` and this directory's pidfile is
    adopted instead (and the record rewritten); the pidfile is only a hint. The process
    is None when no such qemu is alive (then starting one is safe). Raises QemuUnresponsive
    when it is alive but QMP does not answer (a hung qemu must be ended, never duplicated)."""
    paths = RunPaths(run_dir)
    problems: list[str] = []
    record = _usable_record(paths, vm_id, problems)
    process = None
    if record is not None:
        process = _hold(record, paths, on_event, problems)
    if process is None:
        process = _hold_by_command_line(paths, vm_id, on_event, problems)
    problem = "; ".join(problems) or None
    if process is None:
        if problem is not None:
            log.warning("nothing adopted for VM %s: %s", vm_id, problem)
        return Adoption(None, problem)
    try:
        await process.qmp.connect(timeout)
        await process.qmp.status(timeout)
    except QmpError as exc:
        if process.exited():
            await process.close()
            return Adoption(None, problem)
        await process.qmp.close()
        raise QemuUnresponsive(process, str(exc), problem) from exc
    except BaseException:
        await process.close()
        raise
    process.watch()
    log.info("adopted qemu for VM %s (pid %d)", vm_id, process.pid)
    return Adoption(process, problem)


def _usable_record(paths: RunPaths, vm_id: str, problems: list[str]) -> LaunchRecord | None:
    """The launch record if it is one of this VM; what is wrong with it (and with the
    pidfile, which qemu writes and the record must agree with) goes to `problems`."""
    record = LaunchRecord.load(paths)
    if isinstance(record, str):
        problems.append(record)
        record = None
    elif record is not None and record.vm_id != vm_id:
        problems.append(f"launch record {paths.record} is of VM {record.vm_id[:36]}")
        record = None
    pidfile = read_pid_file(paths.pidfile)
    if pidfile.problem is not None:
        problems.append(pidfile.problem)
    elif record is not None and pidfile.pid is not None and pidfile.pid != record.pid:
        problems.append(f"pid file says {pidfile.pid}, the launch record {record.pid}")
    return record


def _hold(
    record: LaunchRecord,
    paths: RunPaths,
    on_event: EventHandler | None,
    problems: list[str],
) -> QemuProcess | None:
    """A pidfd on the recorded process if it is still that process, else None."""
    held = hold(record.pid, lambda facts: _identity_problem(facts, record, paths))
    if not isinstance(held, Held):
        log.info("not adopting pid %d for VM %s: %s", record.pid, record.vm_id, held)
        problems.append(f"the recorded qemu pid {record.pid} is not running ({held})")
        return None
    qmp = Qmp(paths.qmp_socket, name=process_name(record.vm_id), on_event=on_event)
    return QemuProcess(
        vm_id=record.vm_id,
        paths=paths,
        pid=record.pid,
        pidfd=held.pidfd,
        start_time=record.start_time,
        argv=record.argv,
        qmp=qmp,
    )


def _hold_by_command_line(
    paths: RunPaths, vm_id: str, on_event: EventHandler | None, problems: list[str]
) -> QemuProcess | None:
    """A live qemu of this VM and run directory found through /proc (its -uuid and
    -pidfile), for when the launch record could not lead to it; the record is rewritten."""

    def identity(facts: ProcFacts) -> str | None:
        return None if _runs_this_vm(facts, paths, vm_id) else "not a qemu of this VM"

    for facts in find(identity):
        held = hold(facts.pid, identity)
        if not isinstance(held, Held):
            continue
        found = held.facts
        with contextlib.suppress(OSError):  # a hint for the next adoption only
            _record_of(vm_id, found).write(paths)
        if problems:
            problems.append(f"re-adopted qemu pid {found.pid} found by its command line")
        qmp = Qmp(paths.qmp_socket, name=process_name(vm_id), on_event=on_event)
        return QemuProcess(
            vm_id=vm_id,
            paths=paths,
            pid=found.pid,
            pidfd=held.pidfd,
            start_time=found.start_time,
            argv=found.argv,
            qmp=qmp,
        )
    return None


def _record_of(vm_id: str, facts: ProcFacts) -> LaunchRecord:
    return LaunchRecord(
        vm_id=vm_id,
        pid=facts.pid,
        start_time=facts.start_time,
        uid=facts.uid,
        argv=facts.argv,
        launched_at=time.time(),
    )


# ---- shutdown -------------------------------------------------------------------------------


class ShutdownStep(enum.StrEnum):
    """Which step of the ladder ended qemu."""

    ALREADY_EXITED = "already-exited"
    POWERDOWN = "powerdown"
    QUIT = "quit"
    SIGTERM = "sigterm"
    SIGKILL = "sigkill"


@dataclass(frozen=True)
class ShutdownDeadlines:
    """Seconds each step may take (sending it and waiting for the exit); 0 skips a step.
    The guest needs time to power down; qemu ends at once on quit and on signals."""

    powerdown: float = 30.0
    quit: float = 5.0
    sigterm: float = 5.0
    sigkill: float = 5.0


DEFAULT_DEADLINES = ShutdownDeadlines()


async def shutdown(
    process: QemuProcess,
    qmp: Qmp | None = None,
    deadlines: ShutdownDeadlines = DEFAULT_DEADLINES,
) -> ShutdownStep:
    """End qemu: guest ACPI powerdown, then QMP quit, then SIGTERM, then SIGKILL, each step
    with its own deadline; returns the step that ended it. QMP steps are skipped when QMP
    is not connected. Afterwards QMP is closed and the process handle released, whatever
    happened; the exit stays in `process.exit`. Raises QemuShutdownError if it survives."""
    qmp = process.qmp if qmp is None else qmp
    steps: list[tuple[ShutdownStep, float, Callable[[float], Awaitable[None]]]] = [
        (ShutdownStep.POWERDOWN, deadlines.powerdown, _qmp_action(qmp, "system_powerdown")),
        (ShutdownStep.QUIT, deadlines.quit, _qmp_action(qmp, "quit")),
        (ShutdownStep.SIGTERM, deadlines.sigterm, _signal_action(process, signal.SIGTERM)),
        (ShutdownStep.SIGKILL, deadlines.sigkill, _signal_action(process, signal.SIGKILL)),
    ]
    try:
        if process.exited():
            await process.wait()
            return ShutdownStep.ALREADY_EXITED
        for step, deadline, action in steps:
            if deadline <= 0 or (step in _QMP_STEPS and not qmp.connected):
                continue
            if await _run_step(process, step, deadline, action):
                log.info("qemu for VM %s ended by %s", process.vm_id, step)
                return step
        facts = proc_facts(process.pid)
        raise QemuShutdownError(process, facts.state if facts else "?")
    finally:
        await qmp.close()
        await process.close()


_QMP_STEPS = frozenset({ShutdownStep.POWERDOWN, ShutdownStep.QUIT})


async def _run_step(
    process: QemuProcess,
    step: ShutdownStep,
    deadline: float,
    action: Callable[[float], Awaitable[None]],
) -> bool:
    """Send the step and wait for the exit, both within `deadline`; True if qemu ended."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    try:
        await action(deadline)
    except QmpError as exc:  # a hung monitor or a connection ending as qemu exits
        log.info("%s for VM %s: %s", step, process.vm_id, exc)
    try:
        await process.wait(timeout=max(0.0, end - loop.time()))
    except TimeoutError:
        log.warning("qemu for VM %s still runs %g s after %s", process.vm_id, deadline, step)
        return False
    return True


def _qmp_action(qmp: Qmp, command: str) -> Callable[[float], Awaitable[None]]:
    async def act(timeout: float) -> None:
        await qmp.execute(command, timeout=timeout)

    return act


def _signal_action(process: QemuProcess, sig: int) -> Callable[[float], Awaitable[None]]:
    async def act(timeout: float) -> None:
        process.send_signal(sig)

    return act
