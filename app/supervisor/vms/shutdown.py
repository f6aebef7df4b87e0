"""Stopping and removing a VM: the shutdown ladder, its escalation to SIGKILL for a kill,
and the removal of its taps and run directory."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
from collections.abc import Sequence

from app.db.models import Vm
from app.domain.vms import VmStatus
from app.host.errors import HostError
from app.host.netlink import LinkError
from app.host.qemu import QemuError, ShutdownDeadlines, find_running, shutdown
from app.supervisor.vm_taps import TapPlan
from app.supervisor.vms.events import ProcessEvents
from app.supervisor.vms.state import KILL_DEADLINES, STOP_KILL, VmState, log


class Stopper(ProcessEvents):
    """The shutdown ladder (guest power-down, QMP quit, SIGTERM, SIGKILL; app.host.qemu
    .shutdown), the removal of a VM's host objects, and the kill that cuts a ladder short."""

    def _escalate(self, row: Vm, state: VmState) -> None:
        """A kill (or a forced delete) while a graceful ladder climbs: SIGKILL now rather
        than after the ladder's deadlines (the action table: kill while stopping)."""
        process = state.process
        if (
            row.stop_mode == STOP_KILL
            and state.busy in (VmStatus.STOPPING, VmStatus.DELETING)
            and process is not None
            and not process.exited()
        ):
            log.info("VM %s: escalating the stop to SIGKILL", state.vm_id)
            with contextlib.suppress(OSError):  # the ladder released the handle meanwhile
                process.send_signal(signal.SIGKILL)

    def _deadlines_for(self, row: Vm) -> ShutdownDeadlines:
        """A kill (or a forced delete) skips the guest's power-down and qemu's quit."""
        return KILL_DEADLINES if row.stop_mode == STOP_KILL else self.deadlines

    async def _end(self, state: VmState, name: str, deadlines: ShutdownDeadlines) -> bool:
        """The shutdown ladder for a running qemu; its exit is recorded. False when qemu
        survived it (then the VM is `stuck` until the user changes it)."""
        process = state.process
        if process is None:
            return True
        state.stopped_by_us = True
        try:
            step = await shutdown(process, deadlines=deadlines)
            log.info("VM %s (%s) ended by %s", name, state.vm_id, step)
        except QemuError as exc:  # survived SIGKILL: stuck in the kernel
            log.error("VM %s: %s", state.vm_id, exc)
            state.stuck = str(exc)
        if process.exit is not None:
            self._record_exit(state, process, process.exit)
            return True
        if state.process is process:
            state.process = None  # the handle was released by shutdown()
        return False

    async def _stop(
        self, state: VmState, name: str, taps: list[TapPlan], deadlines: ShutdownDeadlines
    ) -> None:
        await self._end(state, name, deadlines)
        await self._drop_taps(state, [tap.name for tap in taps])

    async def _remove(
        self, state: VmState, taps: list[TapPlan], deadlines: ShutdownDeadlines
    ) -> None:
        if not await self._end(state, state.vm_id, deadlines):
            return
        running = find_running(state.vm_id)
        if running:  # a qemu of this VM the worker does not hold: never orphan it
            state.stuck = f"a qemu of this VM still runs as pid {running[0]}; not removing"
            return
        await self._drop_taps(state, [tap.name for tap in taps])
        if state.taps or state.vfs:
            return  # netlink or sysfs failed: retried after a backoff
        await asyncio.to_thread(shutil.rmtree, self.vm_dir(state.vm_id), True)
        state.removed = True

    async def _drop_taps(self, state: VmState, names: Sequence[str] = ()) -> None:
        """The VM's taps (and SR-IOV VFs) once qemu does not run."""
        if state.vfs and not state.running:
            await self._release_vfs(state)
        wanted = sorted(state.taps.union(names))
        if not wanted:
            return
        try:
            await self._vm_taps().remove(state.vm_id, wanted)
        except (LinkError, TimeoutError) as exc:
            log.warning("VM %s: could not remove taps %s: %s", state.vm_id, wanted, exc)
            self._retry_later(state, f"removing taps: {exc or 'timed out'}")
            return
        state.taps.difference_update(wanted)
        if state.retry_at is not None and not state.running and not state.vfs:
            self._retry_done(state)

    async def _release_vfs(self, state: VmState) -> None:
        """SR-IOV VFs back to their own driver with free settings (app.host.sriov)."""
        vfs = list(state.vfs.values())
        try:
            await self._vm_taps().release_vfs(vfs)
        except (HostError, TimeoutError, OSError) as exc:
            log.warning("VM %s: could not release SR-IOV VFs: %s", state.vm_id, exc)
            self._retry_later(state, f"releasing SR-IOV VFs: {exc or 'timed out'}")
            return
        for vf in vfs:
            state.vfs.pop(vf.pci_address, None)
