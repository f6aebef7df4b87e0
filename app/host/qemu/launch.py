"""Starting qemu: prepare the run directory, fork and exec (in the VM's network namespace,
as its user, from a thread that entered the namespace), record the launch, and wait until
QMP answers; a qemu that does not come up is killed before the error is raised."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence

from app.host.files import remove
from app.host.netns import enter_for_this_thread
from app.host.procs import proc_facts
from app.host.qemu.argv import LaunchSpec, launch_argv, process_name
from app.host.qemu.errors import QemuAlreadyRunning, QemuLaunchError
from app.host.qemu.identity import LaunchRecord, find_running
from app.host.qemu.process import QemuProcess, reap_detached
from app.host.qemu.rundir import chown_own_file, open_log
from app.host.qmp import EventHandler, Qmp, QmpDisconnected

log = logging.getLogger(__name__)


QEMU_UMASK = 0o077
REAP_GRACE = 5.0  # seconds to wait for a launch we abandon to be gone after SIGKILL
EXIT_GRACE = 0.5  # seconds for an exit to show on the pidfd once QMP hung up


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
    reap_detached()
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
        chown_own_file(path, uid, gid)
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


def _qemu_env() -> dict[str, str]:
    # Nothing of the daemon's environment (tokens, proxies) leaks into the guest's process.
    return {"PATH": os.environ.get("PATH", os.defpath), "LC_ALL": "C"}


_MEMLOCK_LOCK = threading.Lock()


@contextlib.contextmanager
def _memlock(limit: int | None) -> Iterator[None]:
    """RLIMIT_MEMLOCK of the daemon raised to `limit` (soft and hard) while qemu is forked:
    a child inherits its parent's limits through fork and exec, and keeps them when it
    drops to the qemu user (an unprivileged process cannot raise its own hard limit), so
    qemu starts with them; restored afterwards. Launches that raise it are serialized; a
    process another thread forks meanwhile inherits the higher limit too (harmless: it
    only allows locking memory). None: nothing changes."""
    if limit is None:
        yield
        return
    with _MEMLOCK_LOCK:
        before = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        hard = before[1] if before[1] == resource.RLIM_INFINITY else max(before[1], limit)
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (max(before[0], limit), hard))
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_MEMLOCK, before)


def _spawn(spec: LaunchSpec, argv: Sequence[str]) -> subprocess.Popen[bytes]:
    """Fork and exec qemu (synchronously: no await between the spawn and the record, so a
    cancelled launch can never lose a running child)."""
    log_fd = open_log(spec.paths)
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
        with _memlock(spec.memlock):
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
    record = LaunchRecord(
        vm_id=spec.vm_id,
        pid=child.pid,
        start_time=facts.start_time,
        uid=os.getuid() if spec.user is None else spec.user,
        argv=tuple(argv),
        launched_at=time.time(),
    )
    record.write(paths)
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
        launched_at=record.launched_at,
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
