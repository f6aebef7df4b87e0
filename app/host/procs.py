"""Facts about processes from /proc, and pidfd helpers: how the daemon recognises the
processes it started (qemu, dnsmasq) after a restart, and notices them exit without being
their parent."""

from __future__ import annotations

import os
import select
from dataclasses import dataclass


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
