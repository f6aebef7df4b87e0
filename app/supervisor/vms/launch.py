"""Launching a VM's qemu: the spec from its rows, its bridge taps made and handed over as
open descriptors (as libvirt does), the user it runs as; and the check of a running VM's taps."""

from __future__ import annotations

import pwd
from functools import partial

from app.db.models import Vm, VmNic
from app.db.repositories import vm_spec
from app.domain.errors import DomainError
from app.domain.qemu_argv import qemu_argv
from app.domain.vms import resolve_accelerator
from app.host.errors import HostError
from app.host.netlink import LinkError
from app.host.qemu import LaunchSpec, QemuLaunchError, launch
from app.host.vhost import VhostError, close_all
from app.supervisor.faults import is_transient
from app.supervisor.vm_taps import TapPlan, open_vhost_fds
from app.supervisor.vms.events import ProcessEvents
from app.supervisor.vms.hotplug import guest_nic_indexes
from app.supervisor.vms.state import LAUNCH_TIMEOUT, VmState, log, started_at

VFIO_MEMLOCK_EXTRA = 1 << 30  # bytes beyond guest RAM, as libvirt allows for VFIO


def vfio_memlock(memory_mib: int) -> int:
    """RLIMIT_MEMLOCK (bytes) for a qemu with VFIO devices: VFIO pins all guest RAM for the
    device's DMA, and an unprivileged qemu may lock only this much (libvirt: RAM + 1 GiB)."""
    return memory_mib * (1 << 20) + VFIO_MEMLOCK_EXTRA


class Launcher(ProcessEvents):
    """Launch: the VM's spec, its bridge taps made and opened, qemu started as its user."""

    async def _launch(
        self, state: VmState, row: Vm, nics: list[VmNic], taps: list[TapPlan]
    ) -> None:
        generation, intent = row.generation, row.intent_generation
        state.tap_problem = state.limit_problem = None
        state.taps_checked_at = self.clock()
        state.limits_generation = generation
        try:
            vm = vm_spec(row, nics)
            accelerator = resolve_accelerator(vm.accelerator, self.kvm_runs_guests())
            missing = [tap.name for tap in taps if tap.homeless]
            if missing:
                raise DomainError(f"the bridge of tap(s) {', '.join(missing)} is gone")
            user = self._run_as(row)
        except (DomainError, ValueError) as exc:
            state.held = (intent, str(exc))
            return
        if taps:
            state.taps.update(tap.name for tap in taps)
            try:
                refused = await self._vm_taps().ensure(row.id, taps)
                self._note_limits(state, refused)
            except (HostError, TimeoutError) as exc:
                reason = f"creating taps: {exc or 'timed out'}"
                if is_transient(exc):
                    self._retry_later(state, reason)
                else:
                    state.held = (intent, reason)
                return
        vfs = [(nic.vf, nic.mac) for nic in vm.nics if nic.vf is not None]
        if vfs:
            # SR-IOV NICs: each VF configured on its PF and handed to vfio-pci before qemu
            # starts (it opens /dev/vfio/<group> at once); released when qemu has ended
            state.vfs.update((vf.pci_address, vf) for vf, _ in vfs)
            try:
                await self._vm_taps().hand_vfs(vfs, user)
            except (HostError, TimeoutError, OSError) as exc:
                reason = f"handing SR-IOV VFs to vfio-pci: {exc or 'timed out'}"
                if isinstance(exc, HostError) and is_transient(exc):
                    self._retry_later(state, reason)
                else:
                    state.held = (intent, reason)
                return
        tap_fds: dict[str, list[int]] = {}
        vhost_fds: dict[str, list[int]] = {}
        vhost_net = self.vhost_net()
        try:
            # qemu gets the taps as open descriptors (as libvirt does): it needs no access
            # to /dev/net/tun, and an unprivileged qemu works wherever the daemon does; the
            # same for /dev/vhost-net, opened once per tap queue of a NIC that uses it
            if any(nic.tap_name for nic in nics):
                tap_fds = await self._vm_taps().open(nics, self.vm_dir(row.id), user)
            vhost_fds = open_vhost_fds(vm.nics, tap_fds, vhost_net)
        except (LinkError, VhostError, TimeoutError) as exc:
            close_all(tap_fds)
            what = "" if isinstance(exc, VhostError) else "opening taps: "  # it names the device
            self._retry_later(state, f"{what}{exc or 'timed out'}")
            return
        passed = (*tap_fds.values(), *vhost_fds.values())
        try:
            spec = LaunchSpec(
                vm_id=row.id,
                argv=qemu_argv(vm, self.qemu_binary, accelerator, vhost_net, tap_fds, vhost_fds),
                run_dir=self.vm_dir(row.id),
                user=None if user is None else user[0],
                group=None if user is None else user[1],
                netns=self.netns,
                sandbox=True,
                name=row.name,
                pass_fds=tuple(fd for fds in passed for fd in fds),
                memlock=vfio_memlock(vm.memory_mib) if vfs else None,
            )
            process = await launch(spec, LAUNCH_TIMEOUT, partial(self._on_qmp_event, state))
        except ValueError as exc:
            state.held = (intent, str(exc))
            return
        except QemuLaunchError as exc:
            state.held = (intent, str(exc).rpartition("\nargv: ")[0] or str(exc))
            state.exit_code, state.output = exc.exit_code, exc.output or None
            return
        finally:
            close_all(tap_fds)  # qemu holds its own copies
            close_all(vhost_fds)
        self._retry_done(state)
        state.accelerator = accelerator.value
        state.started_at = started_at(process.launched_at)
        state.exit_code, state.exit_at, state.output = None, None, None
        state.stopped_by_us = False
        state.launched_generation = generation
        # the guest NICs it was started with (hotplug changes them from here on)
        state.plugged = guest_nic_indexes(nics)
        state.lost_taps.clear()
        state.waiting_for_port.clear()
        state.nic_problem = state.nic_retry_at = None
        self._hold(state, process)
        log.info(
            "VM %s (%s) runs as pid %d (uid %s) under %s",
            row.name,
            row.id,
            process.pid,
            state.user[0] if state.user else "?",
            accelerator,
        )

    def _run_as(self, row: Vm) -> tuple[int, int] | None:
        """The uid/gid the VM's qemu runs as: its run_as, else the daemon's qemu user
        (None: qemu_user is unset, it runs as the daemon). A missing user is an error on
        the VM, never a silent fallback to root."""
        if row.run_as_uid is not None:
            gid = row.run_as_uid if row.run_as_gid is None else row.run_as_gid
            return row.run_as_uid, gid
        if self.qemu_user is None:
            return None
        try:
            entry = pwd.getpwnam(self.qemu_user)
        except KeyError:
            raise DomainError(
                f"the qemu user {self.qemu_user!r} does not exist: create it with `useradd "
                f"--system --no-create-home --shell /usr/sbin/nologin {self.qemu_user}` "
                "(make run and deploy/install.sh do) and start the VM again, or give it run_as"
            ) from None
        return entry.pw_uid, entry.pw_gid

    def _owner(self, row: Vm) -> tuple[int, int] | None:
        """The owner of the VM's bridge taps: the user its qemu runs as, when known."""
        try:
            return self._run_as(row)
        except DomainError:
            return None

    async def _check_taps(self, state: VmState, taps: list[TapPlan]) -> None:
        """A running VM's bridge taps: one taken off its bridge (brctl delif), or whose
        isolation flag was changed by hand, is put back as the NIC wants it; one deleted by
        hand is reported and its NIC re-plugged with a new tap where the VM can hot-plug it
        (qemu holds the deleted device, whose netdev cannot be swapped)."""
        check = await self._vm_taps().verify(state.vm_id, taps)
        repaired, lost = check.repaired, check.lost
        for name, changed in check.limits_repaired.items():
            what = f"tap {name}'s rate limits were not as asked ({'; '.join(changed)})"
            log.info("VM %s: %s; applied", state.vm_id, what)
            self._publish(state, "drift_repaired", f"{what}: applied")
        self._note_limits(state, check.limit_problems)
        for name in repaired:
            what = f"link {name} was down, off its bridge or its port settings changed"
            log.warning("VM %s: %s; repaired", state.vm_id, what)
            self._publish(state, "drift_repaired", f"{what}: repaired")
        state.lost_taps |= set(lost)  # re-plugged where the VM can (app.supervisor.vms.hotplug)
        if lost and state.tap_problem is None:
            state.tap_problem = (
                f"tap(s) {', '.join(lost)} deleted by hand (qemu holds the deleted device): "
                "re-plugging the NIC where the VM can hot-plug it (pc machine, one queue pair: "
                "qemu aborts when a guest lets go of queues whose tap is gone), else the guest "
                "is cut off from its bridge until the VM is stopped and started"
            )
            log.warning("VM %s: %s", state.vm_id, state.tap_problem)
            self._publish(state, "tap_lost", state.tap_problem)
            self._set_wake()  # the next pass shows it on the row

    def _note_limits(self, state: VmState, refused: dict[str, str]) -> None:
        """The taps whose rate limits the kernel refused, on the VM's status_reason (the taps
        themselves work; the next check tries again)."""
        problem = (
            "rate limits not applied: "
            + "; ".join(f"tap {name}: {why}" for name, why in sorted(refused.items()))
            if refused
            else None
        )
        if problem != state.limit_problem:
            state.limit_problem = problem
            if problem is not None:
                log.warning("VM %s: %s", state.vm_id, problem)
                self._publish(state, "rate_limit_failed", problem)
            self._set_wake()
