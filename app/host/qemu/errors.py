"""Errors of the qemu process layer; each carries its evidence (argv, exit code, output)."""

from __future__ import annotations

import shlex
import signal
from collections.abc import Sequence
from typing import TYPE_CHECKING

from app.host.errors import HostError

if TYPE_CHECKING:
    from app.host.qemu.process import QemuProcess


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


def describe_returncode(code: int | None) -> str:
    if code is None:
        return "exit status unknown: not our child (re-adopted)"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
