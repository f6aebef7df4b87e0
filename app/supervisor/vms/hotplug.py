"""NIC hotplug: a running qemu's guest NICs made equal to the stored ones (issue 13 item 6).

The database says which NICs a VM has (app.services.vm_nics changes it before qemu is
touched); the worker knows which guest NIC devices its qemu holds (`VmState.plugged`: the
indexes launched with, or at re-adoption what QMP `qom-list /machine/peripheral` shows, so a
re-adopted qemu with hot-plugged NICs is taken as it is, never as drift of its launch
argv). The difference is carried out under the VM's lock, one NIC at a time:

- plug (QEMU's docs/system/device-emulation and qapi/net.json): the NIC's tap made as at a
  launch (a bridge NIC's own; a tap resource's or port's exists), opened once per queue,
  each descriptor handed to qemu by `getfd` (SCM_RIGHTS over the QMP socket), then
  `netdev_add` tap,fd=NAME and `device_add` with the NIC's model, MAC and id (qemu takes the
  first free slot of the pc machine's PCI root bus; on q35 an empty PCIe root port,
  app.domain.pcie);
- unplug: `device_del`, then the guest's release seen as DEVICE_DELETED (ACPI PCI hotplug
  and PCIe native hotplug need the guest's cooperation: a guest that does not answer within
  `unplug_timeout` leaves it pending, said on the VM, finished when the event comes or at
  the VM's next stop), then `netdev_del`, then the taps qemu no longer holds go;
- re-plug: a running VM's tap deleted by hand is recreated and its NIC unplugged and
  plugged again (a device's netdev cannot be swapped while it exists); not a multi-queue NIC
  (replugs says why).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

from app.db.models import Vm, VmNic
from app.db.repositories import vm_spec
from app.domain.errors import DomainError
from app.domain.nics import nic_driver
from app.domain.pcie import NoFreeRootPort, free_root_port, port_of, root_ports
from app.domain.qemu_argv import device_qmp
from app.domain.vms import PERIPHERALS, Machine, NicSpec, hotplug_refusal, peripheral_nics
from app.host.errors import HostError
from app.host.qemu import QemuProcess
from app.host.qmp import Qmp, QmpCommandError, QmpError, QmpEvents
from app.host.vhost import VhostError, close_all
from app.supervisor.vm_taps import TapPlan, open_vhost_fds
from app.supervisor.vms.events import ProcessEvents
from app.supervisor.vms.state import VmState, log

UNPLUG_TIMEOUT = 20.0  # s for the guest to release a device after device_del


def replugs(nic: VmNic) -> bool:
    """Whether a NIC whose tap was deleted by hand can be re-plugged: not a multi-queue one.
    Unplugging makes the guest's driver let go of its queue pairs, and qemu detaches each
    queue's tap descriptor (TUNSETQUEUE IFF_DETACH_QUEUE), which fails on a deleted tap:
    qemu 7.2 then aborts (hw/net/virtio-net.c, virtio_net_set_queue_pairs asserts), taking
    the whole VM down. Such a NIC stays cut off until the VM is stopped and started."""
    return nic.queues <= 1


def guest_nic_indexes(nics: Sequence[VmNic]) -> set[int]:
    """The indexes of the NICs that are guest devices (nic<i>); a hub join has none."""
    return {nic.position for nic in nics if nic.model is not None}


@dataclass(frozen=True)
class NicChanges:
    """What a running qemu needs: devices to unplug (indexes), NICs to plug."""

    unplug: tuple[int, ...]
    plug: tuple[VmNic, ...]


class Hotplug(ProcessEvents):
    """The hotplug part of the VM worker (see the module's docstring)."""

    unplug_timeout: float = UNPLUG_TIMEOUT

    def _nic_changes(self, state: VmState, row: Vm, nics: Sequence[VmNic]) -> NicChanges | None:
        """The difference between the stored guest NICs and what qemu holds (plus NICs whose
        tap was deleted by hand: re-plugged), None when there is none, nothing is known
        of qemu's devices yet, or a pending unplug waits for the guest."""
        if state.plugged is None or state.process is None:
            return None
        if state.nic_retry_at is not None and self.clock() < state.nic_retry_at:
            return None
        by_index = {nic.position: nic for nic in nics if nic.model is not None}
        if state.waiting_for_port - set(by_index):  # a waiting NIC was removed
            state.waiting_for_port &= set(by_index)
            if not state.waiting_for_port and state.nic_retry_at is None:
                state.nic_problem = None

        def pluggable(nic: VmNic) -> bool:
            # a NIC the API could not refuse (stored while qemu was being started) waits
            # for the next start rather than failing here
            return hotplug_refusal(vm_spec(row, [nic]).nics[0], Machine(row.machine)) is None

        lost = {
            i
            for i, nic in by_index.items()
            if nic.tap_name in state.lost_taps and pluggable(nic) and replugs(nic)
        }
        unplug = (state.plugged - set(by_index)) | (lost & state.plugged)
        wanted = sorted(set(by_index) - (state.plugged - lost))
        waits = state.waiting_for_port
        plug = [
            by_index[i] for i in wanted if i in lost or (pluggable(by_index[i]) and i not in waits)
        ]
        if not unplug and not plug:
            return None
        return NicChanges(tuple(sorted(unplug)), tuple(plug))

    async def _sync_nics(
        self, state: VmState, row: Vm, nics: list[VmNic], taps: list[TapPlan], changes: NicChanges
    ) -> None:
        """Unplug, then plug, one NIC at a time; a failure stays on the VM (status_reason)
        and is tried again after a backoff."""
        process = state.process
        if process is None:
            return
        state.nic_problem = None
        try:
            for index in changes.unplug:
                if not await self._unplug(state, process, index):
                    return  # the guest has not let go: the rest waits (say so, retry later)
            if changes.unplug:
                await self._drop_unused_taps(state, taps)
            spec = vm_spec(row, nics)
            specs = {nic.id: nic for nic in spec.nics}
            plans = {plan.name: plan for plan in taps}
            for nic in changes.plug:
                plan = plans.get(nic.tap_name or "")
                try:
                    await self._plug(state, process, nic, specs[nic.id], plan, Machine(row.machine))
                except NoFreeRootPort as exc:  # not a failure to retry: it waits for a port
                    state.waiting_for_port.add(nic.position)
                    state.nic_problem = str(exc)
                    log.info("VM %s: %s", state.vm_id, exc)
                    self._publish(state, "nic_waits", state.nic_problem)
        except (HostError, DomainError, OSError, TimeoutError) as exc:
            state.nic_problem = f"NIC hotplug: {exc or 'timed out'}"
            state.nic_retry_at = self.clock() + self.resync_interval
            log.warning("VM %s: %s", state.vm_id, state.nic_problem)
            self._publish(state, "nic_hotplug_failed", state.nic_problem)
            return
        state.nic_retry_at = None
        if state.tap_problem is not None and not state.lost_taps:
            state.tap_problem = None

    async def _plug(
        self,
        state: VmState,
        process: QemuProcess,
        nic: VmNic,
        spec: NicSpec,
        plan: TapPlan | None,
        machine: Machine,
    ) -> None:
        index = nic.position
        qmp = process.qmp
        # q35: the root port first, before anything is made or handed to qemu (none free:
        # the NIC waits for the next start, nothing left behind)
        bus = await self._free_port(qmp, index) if machine is Machine.Q35 else None
        owner = None
        if plan is not None:  # a bridge NIC's own tap, made as at a launch
            state.taps.add(plan.name)
            # limits the kernel refuses are reported by the tap check the new generation
            # brings right after (Launcher._check_taps)
            await self._vm_taps().ensure(state.vm_id, [plan])
            owner = (plan.uid, plan.gid) if plan.uid is not None and plan.gid is not None else None
        opened = await self._vm_taps().open([nic], self.vm_dir(state.vm_id), owner)
        vhost_net = self.vhost_net()
        try:
            vhost = open_vhost_fds([spec], opened, vhost_net).get(nic.id, [])
        except VhostError:
            close_all(opened)
            raise
        tap = opened.get(nic.id, [])
        names = [f"net{index}q{queue}" for queue in range(len(tap))]
        vhost_names = [f"net{index}v{queue}" for queue in range(len(vhost))]
        try:
            for fd, name in zip([*tap, *vhost], [*names, *vhost_names], strict=True):
                await qmp.pass_fd(fd, name)
        finally:
            close_all({"tap": tap, "vhost": vhost})  # qemu holds its own copies now
        netdev = nic_driver(spec.backend).netdev_qmp(
            f"net{index}", spec, vhost_net, names, vhost_names
        )
        try:
            await qmp.execute("netdev_add", netdev)
        except QmpError:
            for name in [*names, *vhost_names]:  # never leave a descriptor behind in qemu's monitor
                with contextlib.suppress(QmpError):
                    await qmp.execute("closefd", {"fdname": name})
            raise
        try:
            await qmp.execute("device_add", device_qmp(index, spec, bus))
        except Exception:
            # never leave the netdev behind: it holds the tap, and its id would make the
            # next try's netdev_add a "Duplicate ID"
            with contextlib.suppress(QmpError):
                await qmp.execute("netdev_del", {"id": f"net{index}"})
            raise
        if not spec.link_up:
            await qmp.execute("set_link", {"name": f"nic{index}", "up": False})
        assert state.plugged is not None
        state.plugged.add(index)
        state.lost_taps.discard(nic.tap_name or "")
        where = f" on {bus}" if bus else ""
        log.info("VM %s: NIC %d (%s) plugged%s", state.vm_id, index, spec.mac, where)
        self._publish(state, "nic_plugged", f"NIC {index} ({spec.mac}) plugged")

    async def _free_port(self, qmp: Qmp, index: int) -> str:
        """An empty PCIe root port of a q35 qemu (app.domain.pcie), read from QOM: the
        ports among its peripherals, and each NIC device's `parent_bus`; NoFreeRootPort
        when all are taken."""
        listing = await qmp.execute("qom-list", {"path": PERIPHERALS})
        taken = set()
        for device in peripheral_nics(listing):
            path = f"{PERIPHERALS}/nic{device}"
            bus = await qmp.execute("qom-get", {"path": path, "property": "parent_bus"})
            if (port := port_of(bus)) is not None:
                taken.add(port)
        port = free_root_port(root_ports(listing), taken)
        if port is None:
            raise NoFreeRootPort(index)
        return port

    async def _unplug(self, state: VmState, process: QemuProcess, index: int) -> bool:
        """device_del and the guest's release, then netdev_del. False when the guest has
        not released the device in time (said on the VM; retried at the next resync or
        as soon as its DEVICE_DELETED comes)."""
        qmp = process.qmp
        device = f"nic{index}"
        with qmp.events(["DEVICE_DELETED"]) as events:
            try:
                await qmp.execute("device_del", {"id": device})
            except QmpCommandError as exc:
                if exc.error_class != "DeviceNotFound" and await self._holds(qmp, index):
                    log.info("VM %s: device_del %s: %s", state.vm_id, device, exc)
                    return self._unplug_pending(state, index)
            else:
                if not await self._released(events, device):
                    return self._unplug_pending(state, index)
        with contextlib.suppress(QmpCommandError):  # gone already (a re-adopted half-done one)
            await qmp.execute("netdev_del", {"id": f"net{index}"})
        assert state.plugged is not None
        state.plugged.discard(index)
        if state.waiting_for_port:  # a root port may be free now: the next pass tries them
            state.waiting_for_port.clear()
            self._set_wake()
        log.info("VM %s: NIC %d unplugged", state.vm_id, index)
        self._publish(state, "nic_unplugged", f"NIC {index} unplugged")
        return True

    async def _released(self, events: QmpEvents, device: str) -> bool:
        """Whether DEVICE_DELETED for `device` comes within unplug_timeout."""
        deadline = self.clock() + self.unplug_timeout
        while (remaining := deadline - self.clock()) > 0:
            try:
                event = await events.get(remaining)
            except TimeoutError:
                return False
            if (event.data or {}).get("device") == device:
                return True
        return False

    async def _holds(self, qmp: Qmp, index: int) -> bool:
        """Whether qemu still has the device nic<index>."""
        return index in peripheral_nics(await qmp.execute("qom-list", {"path": PERIPHERALS}))

    def _unplug_pending(self, state: VmState, index: int) -> bool:
        state.nic_problem = (
            f"NIC {index} is being unplugged: the guest has not released the device within "
            f"{self.unplug_timeout:g} s of device_del (PCI hotplug, ACPI or PCIe native, needs "
            "the guest's cooperation); it goes once the guest lets it go, or at the VM's next "
            "stop"
        )
        state.nic_retry_at = self.clock() + self.resync_interval
        log.warning("VM %s: %s", state.vm_id, state.nic_problem)
        self._publish(state, "nic_unplug_pending", state.nic_problem)
        return False

    async def _drop_unused_taps(self, state: VmState, taps: list[TapPlan]) -> None:
        """The bridge taps of removed NICs, once qemu holds none of their devices."""
        assert state.plugged is not None
        wanted = {plan.name for plan in taps}
        unused = sorted(state.taps - wanted)
        if unused:
            await self._vm_taps().remove(state.vm_id, unused)
            state.taps -= set(unused)

    async def _observe_plugged(self, state: VmState, process: QemuProcess) -> None:
        """A re-adopted qemu's guest NIC devices, as QMP shows them (the launch argv may
        predate NICs plugged or unplugged since)."""
        try:
            state.plugged = peripheral_nics(
                await process.qmp.execute("qom-list", {"path": PERIPHERALS})
            )
        except QmpError as exc:
            log.warning("VM %s: cannot list its devices: %s", state.vm_id, exc)
            state.plugged = None  # no hotplug until known (a stop and start resets it)
