"""Re-adoption: the qemu a previous daemon started for a VM, found through its launch record
or, failing that, its command line, and held only once its identity is proven."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from app.host.procs import Held, ProcFacts, find, hold, read_pid_file
from app.host.qemu.argv import process_name
from app.host.qemu.errors import QemuUnresponsive
from app.host.qemu.identity import LaunchRecord, identity_problem, record_of, runs_this_vm
from app.host.qemu.process import QemuProcess
from app.host.qemu.rundir import RunPaths
from app.host.qmp import EventHandler, Qmp, QmpError

log = logging.getLogger(__name__)


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
    held = hold(record.pid, lambda facts: identity_problem(facts, record, paths))
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
        launched_at=record.launched_at,
    )


def _hold_by_command_line(
    paths: RunPaths, vm_id: str, on_event: EventHandler | None, problems: list[str]
) -> QemuProcess | None:
    """A live qemu of this VM and run directory found through /proc (its -uuid and
    -pidfile), for when the launch record could not lead to it; the record is rewritten."""

    def identity(facts: ProcFacts) -> str | None:
        return None if runs_this_vm(facts, paths, vm_id) else "not a qemu of this VM"

    for facts in find(identity):
        held = hold(facts.pid, identity)
        if not isinstance(held, Held):
            continue
        found = held.facts
        with contextlib.suppress(OSError):  # a hint for the next adoption only
            record_of(vm_id, found).write(paths)
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
