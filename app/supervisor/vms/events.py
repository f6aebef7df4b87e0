"""A held qemu's exit (recorded, a pass woken) and its QMP events (SHUTDOWN, RESET, STOP,
RESUME, NIC_RX_FILTER_CHANGED, DEVICE_DELETED), published on the event bus with the VM's fields."""

from __future__ import annotations

import asyncio
from functools import partial

from app.host.procs import proc_facts
from app.host.qemu import QemuExit, QemuProcess
from app.host.qmp import QmpEvent
from app.supervisor.vms.base import WorkerBase
from app.supervisor.vms.state import QMP_EVENTS, VmState, log


class ProcessEvents(WorkerBase):
    """Holding a qemu: its exit wakes a pass; its QMP events become our events."""

    def _hold(self, state: VmState, process: QemuProcess) -> None:
        state.process = process
        facts = proc_facts(process.pid)  # who it really is, not who we asked for
        state.user = (facts.uid, facts.gid) if facts is not None else None
        process.watch().add_done_callback(partial(self._on_exit_future, state, process))

    def _on_exit_future(
        self, state: VmState, process: QemuProcess, future: asyncio.Future[QemuExit]
    ) -> None:
        if future.cancelled():  # the handle was released (worker stopping)
            return
        self._record_exit(state, process, future.result())

    def _record_exit(self, state: VmState, process: QemuProcess, exit: QemuExit) -> None:
        if state.process is not process:
            return  # already recorded
        state.process = None
        state.exit_code = exit.returncode
        state.exit_at = self.clock()
        state.output = exit.output_tail or None
        log.info("VM %s: qemu pid %d ended (%s)", state.vm_id, exit.pid, exit.reason)
        self._set_wake()

    def _on_qmp_event(self, state: VmState, event: QmpEvent) -> None:
        if event.name == "DEVICE_DELETED" and state.nic_retry_at is not None:
            state.nic_retry_at = None  # a guest released a device late: finish its unplug
            self._set_wake()
        if event.name not in QMP_EVENTS or not state.event_fields:
            return
        fields = dict(state.event_fields)
        fields["type"] = f"vm.qmp.{event.name}"
        fields["data"] = dict(event.data) if event.data else None
        self.bus.publish(**fields)

    def _publish(self, state: VmState, what: str, reason: str) -> None:
        if state.event_fields:
            fields = dict(state.event_fields)
            fields.update(type=f"vm.{what}", status_reason=reason)
            self.bus.publish(**fields)
