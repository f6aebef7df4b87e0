"""Adoption after a restart: take over every qemu that still runs from a VM's run directory."""

from __future__ import annotations

import asyncio
from functools import partial

from app.db.models import Vm
from app.db.repositories import VmRepository
from app.host.qemu import QemuUnresponsive, adopt_from
from app.supervisor.vms.hotplug import Hotplug
from app.supervisor.vms.state import ADOPT_TIMEOUT, _argv_option, log, started_at


class Adoption(Hotplug):
    """qemu outlives the daemon: at start-up every qemu found in a VM's run directory is
    taken over (identity checked by app.host.qemu.adopt_from), never started twice."""

    async def _adopt_all(self) -> None:
        """Every VM with a run directory: take over its qemu if one still runs."""
        with self.db.reading() as session:
            rows = list(VmRepository(session).all())
        found = [row for row in rows if self.vm_dir(row.id).is_dir()]
        await asyncio.gather(*(self._adopt_one(row) for row in found))

    async def _adopt_one(self, row: Vm) -> None:
        state = self._state(row)
        try:
            found = await adopt_from(
                self.vm_dir(row.id), row.id, ADOPT_TIMEOUT, partial(self._on_qmp_event, state)
            )
            process, problem = found.process, found.problem
        except QemuUnresponsive as exc:
            # alive and ours but QMP is silent: hold it (never start a second copy); the
            # ladder can still end it with signals
            log.warning("adopted VM %s without QMP: %s", row.id, exc)
            process = exc.process
            problem = "; ".join(p for p in (exc.problem, f"QMP does not answer: {exc}") if p)
        except Exception:
            log.exception("could not adopt the qemu of VM %s", row.id)
            return
        if problem is not None:  # shown on the VM until its next change
            state.note = (row.generation, problem)
        if process is None:
            return
        # the launch record's time, as at the launch, so a restart does not move it; a qemu
        # found only by its command line keeps the stored value
        state.started_at = started_at(process.launched_at) or row.started_at
        state.accelerator = _argv_option(process.argv, "-accel") or row.accelerator_used
        state.exit_at, state.stopped_by_us, state.held = None, False, None
        state.launched_generation = row.launched_generation
        self._hold(state, process)
        if process.qmp.connected:  # the guest NICs it holds now (hotplug since its launch)
            await self._observe_plugged(state, process)
