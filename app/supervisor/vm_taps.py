"""The taps of VMs' NICs whose backend driver asks for one (HostLink.VM_TAP: the `bridge`
backend), made and removed on a thread of their own in the managed
namespace (pyroute2's sync API runs its own event loop and must not run inside the VM
worker's): created owned by the user the VM's qemu runs as, with vnet_hdr (multi_queue
with queues > 1), given the NIC's MTU (else the bridge's), attached, isolated when the NIC
asks (the bridge port flag, before it comes up), brought up and marked
`kvmnetd:vm:<vm id>`, and opened once per queue so that an unprivileged qemu gets them as
descriptors. A foreign link is never touched.

Their rate limits (issue 13) are tc on the tap (app.host.tc): set when the tap is made, read
back and repaired at every check of a running VM's taps (a `tc qdisc del` by hand is drift),
changed there when a PATCH changed them. How traffic from the guest is limited (a police
action, or an ifb device where the kernel has no act_police) is detected on the first tap
that needs it. A tap whose limits the kernel refuses keeps running without them: its
problem is reported on the VM (never stops the other taps or the launch).

The macvtaps of macvtap NICs (HostLink.VM_MACVTAP) live the same life: made at launch on
their parent with the guest's MAC, marked and brought up the same way, their character
device opened and handed to qemu (app.host.macvtap), removed when qemu ends; one deleted
by hand while qemu runs is reported as a lost tap is (they carry no rate limits)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from app.db.models import Vm, VmNic
from app.db.repositories import BridgeFacts, port_master
from app.domain.links import LinkChanges, LinkKind, LinkSpec, tap_mtu
from app.domain.nics import HostLink, find_driver, nic_driver
from app.domain.nics.macvtap import stored_macvtap
from app.domain.nics.spec import VfSpec
from app.domain.rate_limits import EgressMethod, RateLimit
from app.domain.vms import NicSpec
from app.host.macvtap import create_macvtap, open_macvtap
from app.host.netlink import LinkError, LinkOps, open_tap_queues
from app.host.netns import enter_for_this_thread
from app.host.sriov import hand_vf, release_vf
from app.host.tc import ensure_limits, police_available, remove_ifb
from app.host.vhost import VhostError, close_all, open_vhost_net

log = logging.getLogger(__name__)

T = TypeVar("T")
NETLINK_TIMEOUT = 10.0  # one batch of tap calls on the netlink thread


def tap_mark(vm_id: str) -> str:
    """The ifalias of the taps the worker makes for a VM's bridge NICs."""
    return f"kvmnetd:vm:{vm_id}"


@dataclass(frozen=True)
class MacvtapPlan:
    """A macvtap NIC's link settings: its parent, IFLA_MACVLAN_MODE and the guest's MAC."""

    parent: str
    mode: str
    mac: str


@dataclass(frozen=True)
class TapPlan:
    """One bridge NIC's tap, or one macvtap NIC's macvtap (`macvtap` set, `bridge` None)."""

    name: str
    bridge: str | None  # None: the Bridge row is gone (cannot launch; removal still works)
    uid: int | None
    gid: int | None
    multi_queue: bool
    mtu: int  # the NIC's own, else its bridge's: a smaller port drops the bridge's frames
    isolated: bool = False  # the bridge port flag IFLA_BRPORT_ISOLATED (app.domain.isolation)
    limit: RateLimit = field(default_factory=RateLimit)  # tc on the tap (app.domain.rate_limits)
    macvtap: MacvtapPlan | None = None

    @property
    def homeless(self) -> bool:
        """A bridge tap whose bridge row is gone: it cannot be launched."""
        return self.bridge is None and self.macvtap is None


@dataclass
class TapCheck:
    """What a check of a running VM's taps found."""

    repaired: list[str] = field(default_factory=list)  # taps put back on their bridge
    lost: list[str] = field(default_factory=list)  # taps deleted by hand
    limits_repaired: dict[str, list[str]] = field(default_factory=dict)  # tap -> what changed
    limit_problems: dict[str, str] = field(default_factory=dict)  # tap -> why not applied


def macvtap_plan(nic: VmNic, owner: tuple[int, int] | None) -> TapPlan | None:
    """A macvtap NIC's plan; None when its stored options cannot be read (its launch then
    fails on the spec, with the reason)."""
    try:
        parent, mode = stored_macvtap(nic.options or {})
    except (KeyError, TypeError, ValueError):
        return None
    assert nic.tap_name is not None
    return TapPlan(
        name=nic.tap_name,
        bridge=None,
        uid=owner[0] if owner else None,
        gid=owner[1] if owner else None,
        multi_queue=False,
        mtu=nic.mtu or 0,  # 0: the parent's (a macvtap starts with it)
        macvtap=MacvtapPlan(parent, mode.value, nic.mac),
    )


def tap_plans(
    row: Vm,
    nics: Sequence[VmNic],
    bridges: dict[str, BridgeFacts],
    owner: tuple[int, int] | None = None,
) -> list[TapPlan]:
    """The VM's bridge taps, owned by `owner` (uid, gid): the user its qemu runs as."""
    plans = []
    for nic in sorted(nics, key=lambda n: n.position):
        driver = find_driver(nic.backend)
        if driver is not None and driver.host_link is HostLink.VM_MACVTAP and nic.tap_name:
            plan = macvtap_plan(nic, owner)
            if plan is not None:
                plans.append(plan)
            continue
        if driver is None or driver.host_link is not HostLink.VM_TAP or not nic.tap_name:
            continue
        bridge = port_master(nic.bridge_id, nic.vlan_id, bridges)  # a VLAN's bridge, or its own
        plans.append(
            TapPlan(
                name=nic.tap_name,
                bridge=bridge.name if bridge else None,
                uid=owner[0] if owner else None,
                gid=owner[1] if owner else None,
                multi_queue=nic.queues > 1,
                mtu=tap_mtu(nic.mtu, bridge.mtu if bridge else None),
                isolated=nic.isolated is True,
                limit=RateLimit(nic.ingress_kbps, nic.egress_kbps, nic.burst_kib),
            )
        )
    return plans


def open_vhost_fds(
    nics: Sequence[NicSpec], tap_fds: Mapping[str, Sequence[int]], vhost_net: bool
) -> dict[str, list[int]]:
    """/dev/vhost-net opened once per tap descriptor of each NIC of `nics` that uses
    vhost-net (app.domain.vhost: `vhost_net` is the host's capability, for `auto`); NIC id ->
    descriptors. A NIC qemu gets no tap descriptors for gets none either (qemu opens
    /dev/vhost-net itself then). Raises VhostError, with nothing left open."""
    opened: dict[str, list[int]] = {}
    try:
        for nic in nics:
            fds = tap_fds.get(nic.id)
            if fds and nic_driver(nic.backend).uses_vhost(nic, vhost_net):
                opened[nic.id] = open_vhost_net(len(fds))
    except VhostError:
        close_all(opened)
        raise
    return opened


def _is_macvtap(nic: VmNic) -> bool:
    driver = find_driver(nic.backend)
    return driver is not None and driver.host_link is HostLink.VM_MACVTAP


def _tap_to_open(nic: VmNic) -> str | None:
    """The kernel tap of a NIC whose backend has one (its own or a tap resource): qemu gets
    it as descriptors. None for other backends (and for one the registry does not know)."""
    driver = find_driver(nic.backend)
    if driver is None or driver.host_link is HostLink.NONE:
        return None
    return nic.tap_name or None


class VmTaps:
    """Tap calls for the VM worker, run on one thread in the namespace, with deadlines."""

    def __init__(self, netns: str | None) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="vm-netlink",
            initializer=enter_for_this_thread,
            initargs=(netns,),
        )
        self._local = threading.local()  # the thread's LinkOps
        self._egress: EgressMethod | None = None  # detected on the first tap that needs it

    async def ensure(self, vm_id: str, taps: list[TapPlan]) -> dict[str, str]:
        """Make the taps; returns the taps whose limits the kernel refused (tap -> why)."""
        return await self._run(self._ensure_sync, vm_id, taps)

    async def open(
        self, nics: Sequence[VmNic], node_dir: Path, owner: tuple[int, int] | None = None
    ) -> dict[str, list[int]]:
        """Each tap-backed NIC's descriptors; a macvtap's device node, where the daemon
        must make one, goes to `node_dir`, owned by `owner`."""
        return await self._run(self._open_sync, nics, node_dir, owner)

    async def verify(self, vm_id: str, taps: list[TapPlan]) -> TapCheck:
        """A running VM's taps put back on their bridge and given their limits again."""
        return await self._run(self._verify_sync, vm_id, taps)

    async def remove(self, vm_id: str, names: list[str]) -> None:
        await self._run(self._remove_sync, vm_id, names)

    async def hand_vfs(
        self, vfs: Sequence[tuple[VfSpec, str]], owner: tuple[int, int] | None
    ) -> None:
        """Each (VF, MAC) of SR-IOV NICs configured on its PF and bound to vfio-pci, its
        group node `owner`'s (app.host.sriov.hand_vf); netlink on this thread's namespace,
        where the PFs are."""
        await self._run(self._hand_vfs_sync, vfs, owner)

    async def release_vfs(self, vfs: Sequence[VfSpec]) -> None:
        """VFs qemu no longer holds back to their own driver, as free ones."""
        await self._run(self._release_vfs_sync, vfs)

    def _hand_vfs_sync(
        self, vfs: Sequence[tuple[VfSpec, str]], owner: tuple[int, int] | None
    ) -> None:
        ipr = self._link_ops().ipr
        for vf, mac in vfs:
            hand_vf(ipr, vf, mac, owner)

    def _release_vfs_sync(self, vfs: Sequence[VfSpec]) -> None:
        ipr = self._link_ops().ipr
        for vf in vfs:
            release_vf(ipr, vf)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._executor.submit(self._close_link_ops).result(NETLINK_TIMEOUT)
        self._executor.shutdown(wait=False)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(NETLINK_TIMEOUT):
            return await loop.run_in_executor(self._executor, partial(fn, *args))

    @staticmethod
    def _open_sync(
        nics: Sequence[VmNic], node_dir: Path, owner: tuple[int, int] | None
    ) -> dict[str, list[int]]:
        """Every tap-backed NIC's tap, opened once per queue, and every macvtap's character
        device (on the netlink thread: it is in the managed namespace)."""
        opened: dict[str, list[int]] = {}
        try:
            for nic in nics:
                tap = _tap_to_open(nic)
                if tap is None:
                    continue
                if _is_macvtap(nic):
                    opened[nic.id] = [open_macvtap(tap, node_dir, owner)]
                else:
                    opened[nic.id] = open_tap_queues(tap, nic.queues)
        except LinkError:
            for fds in opened.values():
                for fd in fds:
                    os.close(fd)
            raise
        return opened

    def _link_ops(self) -> LinkOps:
        ops: LinkOps | None = getattr(self._local, "ops", None)
        if ops is None:
            ops = self._local.ops = LinkOps()
        return ops

    def _close_link_ops(self) -> None:
        ops: LinkOps | None = getattr(self._local, "ops", None)
        if ops is not None:
            ops.close()
            self._local.ops = None

    def _limits(self, index: int, tap: TapPlan) -> list[str]:
        """The tap's limits made so; what changed. LinkError when the kernel refuses."""
        ipr = self._link_ops().ipr
        if self._egress is None and tap.limit.from_guest is not None:
            police, why = police_available(ipr, index)
            self._egress = EgressMethod.POLICE if police else EgressMethod.IFB
            log.info("traffic from guests is limited by %s (%s)", self._egress, why or "act_police")
        return ensure_limits(ipr, index, tap.name, tap.limit, self._egress or EgressMethod.IFB)

    def _ensure_sync(self, vm_id: str, taps: list[TapPlan]) -> dict[str, str]:
        """Fresh taps, attached, up and marked. A tap of ours left from an earlier run is
        re-created (qemu does not run: the caller checked); a foreign link is never touched."""
        ops = self._link_ops()
        mark = tap_mark(vm_id)
        problems: dict[str, str] = {}
        for tap in taps:
            existing = ops.get(tap.name)
            if existing is not None:
                if existing.alias != mark:
                    raise LinkError(
                        f"{tap.name} exists and is not ours (ifalias {existing.alias!r})",
                        errno.EEXIST,
                    )
                ops.delete(existing.index, tap.name)
            if tap.macvtap is not None:
                self._ensure_macvtap(ops, mark, tap, tap.macvtap)
                continue
            spec = LinkSpec(
                id=vm_id,
                kind=LinkKind.TAP,
                name=tap.name,
                owner_uid=tap.uid,
                owner_gid=tap.gid,
                multi_queue=tap.multi_queue,
                vnet_hdr=True,
            )
            index = ops.create(spec)
            try:
                changes = LinkChanges(
                    mark=mark,
                    master=tap.bridge,
                    set_up=True,
                    mtu=tap.mtu,
                    # isolated before it comes up (LinkOps.apply); a new port starts off
                    isolated=True if tap.isolated and tap.bridge else None,
                )
                ops.apply(index, tap.name, changes)
            except LinkError:
                ops.delete(index, tap.name)  # never leave an unmarked tap behind
                raise
            try:
                self._limits(index, tap)
            except LinkError as exc:  # the tap works; its limits are reported on the VM
                problems[tap.name] = str(exc)
        return problems

    @staticmethod
    def _ensure_macvtap(ops: LinkOps, mark: str, tap: TapPlan, plan: MacvtapPlan) -> None:
        index = create_macvtap(ops.ipr, tap.name, plan.parent, plan.mode, plan.mac)
        try:
            changes = LinkChanges(mark=mark, set_up=True, mtu=tap.mtu or None)
            ops.apply(index, tap.name, changes)
        except LinkError:
            ops.delete(index, tap.name)  # never leave an unmarked macvtap behind
            raise

    def _verify_sync(self, vm_id: str, taps: list[TapPlan]) -> TapCheck:
        ops = self._link_ops()
        mark = tap_mark(vm_id)
        check = TapCheck()
        repaired, lost = check.repaired, check.lost
        for tap in taps:
            link = ops.get(tap.name)
            if link is None:
                lost.append(tap.name)
                continue
            if link.alias != mark:
                continue  # not ours: never touched
            if tap.macvtap is not None:
                if not link.up:  # `ip link set down` by hand
                    ops.apply(link.index, tap.name, LinkChanges(set_up=True))
                    repaired.append(tap.name)
                continue
            try:
                changed = self._limits(link.index, tap)
            except LinkError as exc:
                check.limit_problems[tap.name] = str(exc)
            else:
                if changed:
                    check.limits_repaired[tap.name] = changed
            if tap.bridge is None:
                continue  # its bridge is gone
            master = ops.index_of(tap.bridge)
            joining = link.master_index != master
            isolated = tap.isolated if joining or link.port_isolated != tap.isolated else None
            if joining and not tap.isolated:
                isolated = None  # a port joining starts not isolated
            if joining or not link.up or link.mtu != tap.mtu or isolated is not None:
                mtu = tap.mtu if link.mtu != tap.mtu else None
                changes = LinkChanges(master=tap.bridge, set_up=True, mtu=mtu, isolated=isolated)
                ops.apply(link.index, tap.name, changes)
                repaired.append(tap.name)
        return check

    def _remove_sync(self, vm_id: str, names: list[str]) -> None:
        ops = self._link_ops()
        mark = tap_mark(vm_id)
        for name in names:
            try:
                remove_ifb(ops.ipr, name)  # the ifb that shaped traffic from its guest, if any
            except LinkError as exc:
                log.warning("removing the ifb of %s: %s", name, exc)
            link = ops.get(name)
            if link is None:
                continue
            if link.alias != mark:
                log.warning("not removing %s: it is not ours (ifalias %r)", name, link.alias)
                continue
            ops.delete(link.index, name)
