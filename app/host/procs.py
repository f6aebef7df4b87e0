"""Facts about processes from /proc, and pidfd helpers: how the daemon recognises the
processes it started (qemu, dnsmasq) after a restart, and notices them exit without being
their parent.

Pid files are read in one place (read_pid_file): whatever a pid file holds (nothing, a
truncated or binary blob, a huge file, a FIFO, a link, `0`, `-1`, a number beyond
/proc/sys/kernel/pid_max) becomes either a pid in 1..pid_max or a sentence saying why there
is none. A pid is then trusted only through hold(): a pidfd opened first, the process's
/proc facts checked by the caller's identity test, and the pidfd confirmed alive after the
check, so every later signal (pidfd_send_signal) reaches that very process. No bare pid is
ever signalled: kill(2) with 0 or -1 would signal a whole process group or every process.
"""

from __future__ import annotations

import contextlib
import os
import select
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app.host.files import FileProblem, read_bounded

PID_FILE_LIMIT = 64  # bytes: a pid file holds one decimal number and a newline
PID_MAX_FILE = Path("/proc/sys/kernel/pid_max")
PID_MAX_LIMIT = 1 << 22  # the kernel's PID_MAX_LIMIT on 64-bit (include/linux/threads.h)


@dataclass(frozen=True)
class ProcFacts:
    """What /proc says about a pid right now."""

    pid: int
    argv: tuple[str, ...]
    start_time: int  # clock ticks after boot (stat field 22)
    state: str  # R, S, D, T, Z, ...
    uid: int  # real uid
    gid: int = -1  # real gid


def proc_facts(pid: int) -> ProcFacts | None:
    """None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat_line = f.read().decode(errors="replace")
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        with open(f"/proc/{pid}/status", "rb") as f:
            status = f.read().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may hold spaces and parentheses: the fields after it follow the last ')'
    fields = stat_line[stat_line.rindex(")") + 2 :].split()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    gid_line = next(line for line in status.splitlines() if line.startswith("Gid:"))
    return ProcFacts(
        pid=pid,
        argv=tuple(os.fsdecode(arg) for arg in cmdline.split(b"\0")[:-1]),
        start_time=int(fields[22 - 3]),
        state=fields[0],
        uid=int(uid_line.split()[1]),
        gid=int(gid_line.split()[1]),
    )


def pids() -> list[int]:
    """Every process id /proc lists now."""
    with os.scandir("/proc") as entries:
        return [int(entry.name) for entry in entries if entry.name.isdigit()]


def in_this_netns(pid: int) -> bool:
    """The process shares the calling thread's network namespace."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat("/proc/thread-self/ns/net").st_ino
    except OSError:
        return False


def pidfd_exited(pidfd: int) -> bool:
    """The process behind `pidfd` has exited (the pidfd polls readable)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


def pid_max() -> int:
    """The largest pid the kernel hands out (proc(5): /proc/sys/kernel/pid_max)."""
    try:
        return int(PID_MAX_FILE.read_text().strip())
    except (OSError, ValueError):
        return PID_MAX_LIMIT


def parse_pid(data: bytes) -> int:
    """The pid a pid file's content names: ASCII digits (blanks and a newline around them
    allowed) of a number in 1..pid_max. Raises ValueError saying what is wrong otherwise."""
    text = data.strip(b" \t\r\n")
    if not text:
        raise ValueError("it is empty")
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"it holds {_shown(data)}, not a process id")
    pid = int(text)
    if not 0 < pid <= pid_max():
        raise ValueError(f"it holds {_shown(text)}, not a process id in 1..{pid_max()}")
    return pid


def _shown(data: bytes) -> str:
    shown = repr(data[:24].decode("ascii", errors="backslashreplace"))
    return shown + ("..." if len(data) > 24 else "")


@dataclass(frozen=True)
class PidFile:
    """What a pid file says: a pid, or why it names none (`problem` is None, and so is
    `pid`, when there is no file: nothing was started, or it exited and cleaned up)."""

    path: Path
    pid: int | None = None
    problem: str | None = None


def read_pid_file(path: Path) -> PidFile:
    """Reads a pid file without trusting it (app.host.files.read_bounded: no link followed,
    no blocking on a FIFO, at most PID_FILE_LIMIT bytes) and accepts only a pid in
    1..pid_max."""
    try:
        data = read_bounded(path, PID_FILE_LIMIT)
    except FileProblem as exc:
        return PidFile(path, problem=f"pid file {exc}")
    if data is None:
        return PidFile(path)
    try:
        return PidFile(path, pid=parse_pid(data))
    except ValueError as exc:
        return PidFile(path, problem=f"pid file {path}: {exc}")


def pid_exists(pid: int) -> bool:
    """Whether a process `pid` (a positive number) exists, without signalling anything."""
    return 0 < pid <= pid_max() and os.path.exists(f"/proc/{pid}")


@dataclass(frozen=True)
class Held:
    """A process held through a pidfd after its identity was checked."""

    facts: ProcFacts
    pidfd: int

    @property
    def pid(self) -> int:
        return self.facts.pid


Identity = Callable[[ProcFacts], str | None]  # why the process is not the one sought


def hold(pid: int, identity: Identity) -> Held | str:
    """A pidfd on `pid` if that process passes `identity`; else why not (the pidfd closed).
    The pidfd is opened before the check and found alive after it: if the process is still
    running then, the facts checked and the pidfd are about the same process."""
    if not 0 < pid <= pid_max():
        return f"{pid} is not a process id"
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return f"no process has pid {pid}"
    except OSError as exc:
        return f"pid {pid} cannot be held: {exc.strerror}"
    facts = proc_facts(pid)
    problem = f"no process has pid {pid}" if facts is None else identity(facts)
    if problem is None and pidfd_exited(pidfd):
        problem = f"pid {pid} exited during the check"
    if problem is not None or facts is None:
        os.close(pidfd)
        return problem or f"no process has pid {pid}"
    return Held(facts, pidfd)


def find(identity: Identity) -> list[ProcFacts]:
    """Every live process (zombies excluded) that passes `identity`, oldest first."""
    found = []
    for pid in pids():
        with contextlib.suppress(OSError, ValueError, IndexError, StopIteration):
            facts = proc_facts(pid)
            if facts is not None and facts.state != "Z" and identity(facts) is None:
                found.append(facts)
    return sorted(found, key=lambda f: (f.start_time, f.pid))
