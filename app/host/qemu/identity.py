"""Process identity: the launch record (launch.json) and the checks that a pid is the qemu
it describes (command line, `-uuid`, pidfile, start time, uid); finding a VM's qemu by its
command line; removing the runtime files of a qemu that has exited."""

from __future__ import annotations

import json
import logging
import os
import shlex
import time
from dataclasses import asdict, dataclass

from app.host.files import FileProblem, read_bounded, remove
from app.host.procs import ProcFacts, find, parse_pid
from app.host.qemu.argv import option_value
from app.host.qemu.rundir import RunPaths

log = logging.getLogger(__name__)


RECORD_LIMIT = 1 << 16  # bytes of launch.json


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


def runs_this_vm(facts: ProcFacts, paths: RunPaths, vm_id: str) -> bool:
    """The process is a qemu of this VM started for this run directory."""
    return (
        option_value(facts.argv, "-uuid") == vm_id
        and option_value(facts.argv, "-pidfile") == str(paths.pidfile)
        and facts.state != "Z"
    )


def identity_problem(facts: ProcFacts | None, record: LaunchRecord, paths: RunPaths) -> str | None:
    """Why the process is not the qemu the record describes; None when it is."""
    if facts is None:
        return "no such process"
    if facts.argv != record.argv:
        return f"its command line is not the recorded qemu: {shlex.join(facts.argv)[:200]}"
    if not runs_this_vm(facts, paths, record.vm_id):
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


def find_running(vm_id: str) -> list[int]:
    """Pids of live processes whose command line carries `-uuid VM_ID`, from any run
    directory. qemu's pidfile lock stops a second copy only in the same directory, and only
    while the first one's pidfile is there."""

    def identity(facts: ProcFacts) -> str | None:
        return None if option_value(facts.argv, "-uuid") == vm_id else "another process"

    return [facts.pid for facts in find(identity)]


def record_of(vm_id: str, facts: ProcFacts) -> LaunchRecord:
    return LaunchRecord(
        vm_id=vm_id,
        pid=facts.pid,
        start_time=facts.start_time,
        uid=facts.uid,
        argv=facts.argv,
        launched_at=time.time(),
    )
