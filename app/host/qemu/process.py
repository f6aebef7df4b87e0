"""A live qemu held through a pidfd (QemuProcess): exit detection on the event loop,
signals through the pidfd, and its children whose handle was closed while they ran."""

from __future__ import annotations

import asyncio
import logging
import os
import select
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from app.host.qemu.errors import QemuError, describe_returncode
from app.host.qemu.identity import remove_runtime_files
from app.host.qemu.rundir import OUTPUT_TAIL_LINES, RunPaths, output_tail
from app.host.qmp import Qmp

log = logging.getLogger(__name__)


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
        launched_at: float | None = None,
    ) -> None:
        self.vm_id = vm_id
        # when the daemon spawned it (Unix time, s; its launch record's), None when unknown
        self.launched_at = launched_at
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


def reap_detached() -> None:
    """Collect our children that ended after their handle was closed: when a VM worker stops
    and another one in the same process takes over (in-process tests), the qemu it adopts is
    still our child, and its zombie would otherwise wait for the next launch()."""
    _detached[:] = [child for child in _detached if child.poll() is None]
