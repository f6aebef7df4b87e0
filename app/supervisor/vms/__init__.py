"""The VM worker: starts, watches, re-adopts and stops the qemu of every VM in the database.

One thread runs one asyncio loop. Serial passes (woken by nudges, qemu exits, due restarts
and a resync timer) read every VM, ask the pure decision (app.domain.vm_plan.decide) what to
do, start the actions as tasks and write the observed state back in one transaction, then
publish events. Actions (launch, the shutdown ladder, removal) run as one task per VM under a
per-VM lock, so a VM is never acted on twice at once and a hung qemu delays only itself; every
await on qemu, QMP or netlink has a deadline. Tasks change only the in-memory process table
and nudge; the database is written by passes alone.

Taps of `bridge` NICs are made, opened and removed by app.supervisor.vm_taps, on a thread of
its own in the managed namespace.

qemu outlives the daemon: start() first re-adopts every qemu found in a VM's run directory
(identity checked by app.host.qemu.adopt), so a restarted daemon never starts a second copy;
stop() releases the handles and leaves qemu running.

The worker is split along its concerns, one module each: state.py (the process table, the
report, constants), base.py (shared core and per-VM backoff), worker.py (control, the loop,
the passes, per-VM serialisation), adoption.py (re-adoption after a restart), launch.py,
shutdown.py (the ladder, stop, removal), events.py (exits and QMP events) and write_back.py
(observed state onto the rows). `from app.supervisor.vms import X` keeps working.
"""

from __future__ import annotations

from app.supervisor.vms.state import Report, VmState, _note_stale_taps
from app.supervisor.vms.worker import VmWorker

__all__ = ["Report", "VmState", "VmWorker", "_note_stale_taps"]
