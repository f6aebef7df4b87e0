"""The shutdown ladder (as QEMU's own python/qemu/machine does it): guest ACPI powerdown,
QMP quit, SIGTERM, SIGKILL, each with its own deadline, cleanup in `finally`."""

from __future__ import annotations

import asyncio
import enum
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from app.host.procs import proc_facts
from app.host.qemu.errors import QemuShutdownError
from app.host.qemu.process import QemuProcess
from app.host.qmp import Qmp, QmpError

log = logging.getLogger(__name__)


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
