"""The VM worker against real qemu (TCG) in a kvt-* namespace, with a real SQLite database.

Rows are made by the real create use case (VmService); desired-state changes are written the
way the API writes them (bump `generation`, add an operation, nudge). Every qemu a test's VMs
run is found through /proc by its -uuid, independently of the worker, and killed by pid in
teardown if one is left; the logs are printed when a test failed.

A TCG boot of the test guest costs ~3 CPU-seconds on a 2-core machine, so only one test boots
the guest to its readiness line; the crash and removal tests act while the guest still boots.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute
from sqlalchemy import select

from app.bus import EventBus
from app.db.models import Bridge, HostPort, LinkName, Operation, Vm, VmNic
from app.db.session import Database
from app.domain.links import LinkKind, ownership_mark
from app.domain.vm_plan import RestartRules
from app.host.qemu import ShutdownDeadlines, reap_detached
from app.schemas.links import BridgeCreate
from app.schemas.vms import VmCreate
from app.services.links import BridgeService
from app.services.vms import HostFacts, VmService
from app.supervisor.vm_taps import tap_mark
from app.supervisor.vms import VmWorker
from tests.db_template import seeded_database_file
from tests.guest.build import Guest, build_guest, kernel_cmdline
from tests.guest.console import wait_ready
from tests.guest.test_guest import tcp_answer
from tests.host.test_qemu import kill_by_pid, live_pids_with_uuid
from tests.netns_tools import ip, links

QEMU = "qemu-system-x86_64"
HOST = HostFacts(
    nic_models=frozenset({"virtio-net-pci", "e1000", "rtl8139", "ne2k_pci", "pcnet", "ne2k_isa"}),
    vhost_missing="not probed",
    kvm_runs_guests=False,
)
HOST_PORT = 17777
GUEST_PORT = 7777


@pytest.fixture(scope="module")
def guest() -> Guest:
    return build_guest("virtio")


@dataclass
class Env:
    """One test's database, bus, run directory and workers; tracks every VM it creates."""

    netns: str
    base: Path
    db: Database
    bus: EventBus
    guest: Guest
    vm_ids: set[str] = field(default_factory=set)
    workers: list[VmWorker] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        return self.base / "run"

    def worker(self, **kw: Any) -> VmWorker:
        kw.setdefault("deadlines", ShutdownDeadlines(powerdown=10, quit=3, sigterm=3, sigkill=3))
        worker = VmWorker(
            self.db,
            self.bus,
            self.run_dir,
            QEMU,
            kvm_runs_guests=lambda: False,
            vhost_net=lambda: False,
            netns=self.netns,
            **kw,
        )
        self.workers.append(worker)
        worker.start()
        assert worker.ready.wait(15), "the worker did not finish its first pass"
        return worker

    def create(self, name: str, *nics: dict[str, Any], **kw: Any) -> str:
        boot = {
            "kernel": str(self.guest.kernel),
            "initrd": str(self.guest.initrd),
            "cmdline": kernel_cmdline(dhcp=True),
        }
        body = VmCreate.model_validate_json(
            json.dumps({"name": name, "boot": boot, "nics": list(nics), **kw})
        )
        with self.db.unit_of_work() as session:
            vm, _, _ = VmService(session).create(body, HOST)
        self.vm_ids.add(vm.id)
        return vm.id

    def desire(self, worker: VmWorker, vm_id: str, action: str, **fields: Any) -> int:
        """Change desired state as the API does: new generation, an operation, a nudge."""
        with self.db.unit_of_work() as session:
            row = session.get(Vm, vm_id)
            assert row is not None
            for key, value in fields.items():
                setattr(row, key, value)
            row.generation += 1
            row.intent_generation = row.generation  # a power intent, as the API's actions
            session.add(
                Operation(
                    action=action,
                    resource="vm",
                    resource_id=vm_id,
                    target_generation=row.generation,
                )
            )
            generation = row.generation
        worker.nudge()
        return generation

    def row(self, vm_id: str) -> Vm | None:
        with self.db.reading() as session:
            return session.get(Vm, vm_id)

    def wait_for(
        self, vm_id: str, check: Callable[[Vm | None], bool], timeout: float = 20
    ) -> Vm | None:
        deadline = time.monotonic() + timeout
        while True:
            row = self.row(vm_id)
            if check(row):
                return row
            if time.monotonic() > deadline:
                shown = (
                    {k: getattr(row, k) for k in ("status", "status_reason", "pid")}
                    if row
                    else None
                )
                raise AssertionError(f"VM {vm_id} did not get there in {timeout} s: {shown}")
            time.sleep(0.01)

    def operations(self, vm_id: str) -> list[tuple[str, int, str, str | None]]:
        with self.db.reading() as session:
            query = (
                select(Operation)
                .where(Operation.resource_id == vm_id)
                .order_by(Operation.target_generation)
            )
            return [
                (op.action, op.target_generation, op.status, op.error)
                for op in session.scalars(query)
            ]

    def event_types(self, vm_id: str) -> list[str]:
        return [e.type for e in self.bus.since(0) if e.resource_id == vm_id]

    def logs(self) -> str:
        out = []
        for path in sorted(self.run_dir.glob("vms/*/*.log*")):
            out.append(f"--- {path} ---\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(out)


@pytest.fixture
def env(netns: str, guest: Guest, request: pytest.FixtureRequest) -> Iterator[Env]:
    # short (unix socket paths) and reachable by an unprivileged qemu
    base = Path(tempfile.mkdtemp(prefix="kvt-vmw-", dir="/tmp"))
    base.chmod(0o711)
    db = Database(f"sqlite:///{seeded_database_file(base / 'k.db')}")
    environment = Env(netns, base, db, EventBus(), guest)
    try:
        yield environment
    finally:
        for worker in environment.workers:
            worker.stop()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(environment.logs())
        leftovers = live_pids_with_uuid(environment.vm_ids)
        for pid in leftovers:
            kill_by_pid(pid, environment.vm_ids)
        deadline = time.monotonic() + 5
        while live_pids_with_uuid(environment.vm_ids) and time.monotonic() < deadline:
            time.sleep(0.02)
        reap_detached()  # qemus a stopped worker launched and another one ended: our zombies
        db.dispose()
        shutil.rmtree(base, ignore_errors=True)
        assert leftovers == [] or report is None or report.failed, f"qemus left: {leftovers}"


def make_bridge(env: Env, name: str = "br0", mtu: int | None = None) -> None:
    """The bridge row and the kernel bridge, marked ours as the link supervisor marks it
    (it does not run here; the VM worker puts taps only on bridges of ours)."""
    with env.db.unit_of_work() as session:
        BridgeService(session).create(BridgeCreate(name=name, mtu=mtu))
        bridge_id = session.scalars(select(Bridge.id).where(Bridge.name == name)).one()
    with IPRoute(netns=env.netns) as ipr:
        ipr.link("add", ifname=name, kind="bridge", br_stp_state=0, br_forward_delay=0)
        index = ipr.link_lookup(ifname=name)[0]
        mark = ownership_mark(LinkKind.BRIDGE, bridge_id)
        ipr.link("set", index=index, state="up", ifalias=mark, **({"mtu": mtu} if mtu else {}))


def forward(port: int) -> dict[str, Any]:
    return {
        "backend": "user",
        "user": {"forwards": [{"host_port": port, "guest_port": GUEST_PORT}]},
    }


def tap_names(env: Env, vm_id: str) -> list[str]:
    with env.db.reading() as session:
        query = select(VmNic.tap_name).where(VmNic.vm_id == vm_id, VmNic.tap_name.is_not(None))
        return [name for name in session.scalars(query) if name]


def running(row: Vm | None) -> bool:
    return row is not None and row.status == "running" and row.observed_generation == row.generation


# ---- boot, adoption, stop -------------------------------------------------------------------


def test_boots_answers_is_adopted_by_a_new_worker_and_stops(env: Env) -> None:
    make_bridge(env)
    vm_id = env.create(
        "web", forward(HOST_PORT), {"backend": "bridge", "bridge": "br0"}, memory_mib=192
    )
    (tap,) = tap_names(env, vm_id)
    started = time.monotonic()
    worker = env.worker()
    row = env.wait_for(vm_id, running, timeout=20)
    assert row is not None and row.pid is not None
    launched = time.monotonic() - started
    assert row.accelerator_used == "tcg" and row.started_at is not None
    assert row.exit_code is None and row.status_reason is None
    assert live_pids_with_uuid({vm_id}) == [row.pid]
    assert env.operations(vm_id) == [("create", 1, "succeeded", None)]
    assert env.event_types(vm_id)[:2] == ["vm.starting", "vm.running"]
    # its tap: ours (marked), on the bridge, up, made for qemu's vnet headers
    kernel = links(env.netns)
    assert kernel[tap].alias == tap_mark(vm_id) and kernel[tap].master == "br0"
    assert kernel[tap].up and kernel[tap].kind == "tun"

    # the guest: DHCP from user networking, and its service through the port forward
    console = env.run_dir / "vms" / vm_id / "console.log"
    ready = wait_ready(console, timeout=40)
    booted = time.monotonic() - started
    assert ready.ip == "10.0.2.15/24" and ready.iface == "eth0"
    hello = tcp_answer(env.netns, "127.0.0.1", HOST_PORT)
    assert hello.address == "10.0.2.15"
    print(f"QMP up after {launched:.2f} s, guest ready after {booted:.1f} s")

    # the daemon goes away: qemu stays; a new worker adopts it and starts no second copy
    pid, first_started_at = row.pid, row.started_at
    worker.stop()
    assert live_pids_with_uuid({vm_id}) == [pid]
    started = time.monotonic()
    successor = env.worker()
    adopted_in = time.monotonic() - started
    row = env.wait_for(vm_id, running)
    assert row is not None and row.pid == pid
    assert row.started_at == first_started_at  # the same launch: the same instant
    assert live_pids_with_uuid({vm_id}) == [pid]  # exactly one qemu with that -uuid
    assert tcp_answer(env.netns, "127.0.0.1", HOST_PORT).address == "10.0.2.15"
    print(f"adopted within {adopted_in:.2f} s")

    # stop: the ladder's ACPI powerdown ends the guest; its tap goes with it
    generation = env.desire(successor, vm_id, "update", power_state="stopped")
    started = time.monotonic()
    row = env.wait_for(vm_id, lambda r: r is not None and r.status == "stopped", timeout=20)
    assert row is not None and row.observed_generation == generation and row.pid is None
    print(f"stopped in {time.monotonic() - started:.2f} s")
    assert live_pids_with_uuid({vm_id}) == []
    assert tap not in links(env.netns)
    assert "KVT-POWEROFF" in console.read_text(errors="replace")
    assert env.operations(vm_id)[-1] == ("update", generation, "succeeded", None)
    types = env.event_types(vm_id)
    assert "vm.stopping" in types and types[-1] == "vm.stopped"
    assert "vm.qmp.SHUTDOWN" in types  # the guest's own power-off, seen over QMP
    shutdown = next(e for e in env.bus.since(0) if e.type == "vm.qmp.SHUTDOWN")
    assert shutdown.data is not None and shutdown.data.get("guest") is True, shutdown


def test_a_running_vms_tap_taken_off_its_bridge_is_put_back_and_a_deleted_one_reported(
    env: Env,
) -> None:
    make_bridge(env)
    vm_id = env.create("web", {"backend": "bridge", "bridge": "br0"}, memory_mib=192)
    (tap,) = tap_names(env, vm_id)
    worker = env.worker(resync_interval=0.3)
    env.wait_for(vm_id, running, timeout=20)
    ip(env.netns, "link", "set", tap, "nomaster")  # brctl delif br0 <tap>, by hand
    deadline = time.monotonic() + 10
    while links(env.netns)[tap].master != "br0":
        assert time.monotonic() < deadline, "the tap was not put back on br0"
        time.sleep(0.05)
    # the event follows the repair (the worker publishes once netlink answered)
    while "vm.drift_repaired" not in env.event_types(vm_id):
        assert time.monotonic() < deadline, env.event_types(vm_id)
        time.sleep(0.05)

    ip(env.netns, "link", "del", tap)  # qemu keeps the deleted device: cannot be repaired
    row = env.wait_for(
        vm_id, lambda r: r is not None and "deleted by hand" in (r.status_reason or "")
    )
    assert row is not None and row.status == "running" and tap in (row.status_reason or "")
    assert "vm.tap_lost" in env.event_types(vm_id)
    env.desire(worker, vm_id, "update", power_state="stopped", stop_mode="kill")
    row = env.wait_for(vm_id, lambda r: r is not None and r.status == "stopped", timeout=30)
    assert row is not None and row.status_reason is None


def test_a_running_vms_taps_are_checked_at_once_when_its_bridge_is_usable_again(
    env: Env,
) -> None:
    """The link supervisor tells the worker (recheck_taps) when a bridge or VLAN a VM has a
    NIC on is usable again (re-created, out of error): the VM's taps go back on it at the
    next pass, not `resync_interval` (here an hour) after their last check."""
    make_bridge(env)
    vm_id = env.create("web", {"backend": "bridge", "bridge": "br0"}, memory_mib=192)
    (tap,) = tap_names(env, vm_id)
    worker = env.worker(resync_interval=3600)
    env.wait_for(vm_id, running, timeout=20)
    assert links(env.netns)[tap].master == "br0"
    # off its bridge, as a bridge deleted and re-created leaves it
    ip(env.netns, "link", "set", tap, "nomaster")
    worker.nudge()
    time.sleep(1.0)
    assert links(env.netns)[tap].master is None  # not looked at before the next resync
    worker.recheck_taps({vm_id, "no-such-vm"})
    deadline = time.monotonic() + 5
    while links(env.netns)[tap].master != "br0":
        assert time.monotonic() < deadline, "the tap was not put back on br0"
        time.sleep(0.05)
    env.desire(worker, vm_id, "update", power_state="stopped", stop_mode="kill")
    env.wait_for(vm_id, lambda r: r is not None and r.status == "stopped", timeout=30)


# ---- crashes and restart policy, removal ----------------------------------------------------


def test_kill_9_is_seen_at_once_and_the_policy_applies_then_delete(env: Env) -> None:
    make_bridge(env)
    never = env.create("never", {"backend": "user"})
    again = env.create(
        "again",
        forward(HOST_PORT),
        {"backend": "bridge", "bridge": "br0"},
        restart_policy="on-failure",
    )
    (tap,) = tap_names(env, again)
    with env.db.reading() as session:
        nic_ids = list(session.scalars(select(VmNic.id).where(VmNic.vm_id == again)))
    worker = env.worker(
        rules=RestartRules(base_delay=0.3),
        deadlines=ShutdownDeadlines(powerdown=0.5, quit=3, sigterm=3, sigkill=3),
    )
    first = {vm: env.wait_for(vm, running) for vm in (never, again)}
    pids = {vm: row.pid for vm, row in first.items() if row is not None}
    # QMP through the worker (what reboot and set_link use), with its deadline
    assert worker.execute(never, "query-uuid") == {"UUID": never}
    with pytest.raises(LookupError):
        worker.execute("no-such-vm", "query-status")

    for pid in pids.values():
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # qemus this test's worker started
    killed = time.monotonic()
    row = env.wait_for(never, lambda r: r is not None and r.status == "crashed", timeout=2)
    latency = time.monotonic() - killed
    assert latency < 1, latency
    assert row is not None and row.exit_code == -signal.SIGKILL and row.pid is None
    assert row.status_reason == "qemu died (exit status -9); restart policy never"
    assert "vm.crashed" in env.event_types(never)

    # on-failure: crashed, then launched again after its backoff, with a new pid
    row = env.wait_for(
        again, lambda r: running(r) and r is not None and r.pid != pids[again], timeout=10
    )
    assert row is not None and row.restarts == 1
    restarted = time.monotonic() - killed
    print(f"kill -9 seen after {latency * 1000:.0f} ms; restarted {restarted:.2f} s after it")
    assert live_pids_with_uuid({again}) == [row.pid]
    assert "vm.crashed" in env.event_types(again)
    # the crashed VM stays crashed (policy never), and is not relaunched by later passes
    worker.nudge()
    time.sleep(0.3)
    crashed = env.row(never)
    assert crashed is not None and crashed.status == "crashed" and not live_pids_with_uuid({never})

    # delete: its qemu, tap, run directory, claims and rows go; the operation closes
    generation = env.desire(worker, again, "delete", deleted=True)
    env.wait_for(again, lambda r: r is None, timeout=15)
    assert live_pids_with_uuid({again}) == []
    assert tap not in links(env.netns)
    assert not (env.run_dir / "vms" / again).exists()
    with env.db.reading() as session:
        assert session.scalars(select(VmNic).where(VmNic.vm_id == again)).all() == []
        assert session.scalars(select(LinkName).where(LinkName.resource_id == again)).all() == []
        assert session.scalars(select(HostPort).where(HostPort.owner_id.in_(nic_ids))).all() == []
    assert env.operations(again)[-1] == ("delete", generation, "succeeded", None)
    assert env.event_types(again)[-1] == "vm.deleted"


# ---- a qemu that cannot start ---------------------------------------------------------------


def test_a_qemu_that_fails_to_start_reports_its_own_error(env: Env, tmp_path: Path) -> None:
    vm_id = env.create("broken", {"backend": "user"})
    with env.db.unit_of_work() as session:
        row = session.get(Vm, vm_id)
        assert row is not None
        row.boot = {**row.boot, "kernel": str(tmp_path / "no-such-kernel")}
    worker = env.worker()
    row = env.wait_for(vm_id, lambda r: r is not None and r.status == "error")
    assert row is not None and row.observed_generation == 1 and row.pid is None
    assert row.exit_code == 1
    assert "no-such-kernel" in (row.last_output or "")
    assert "exited while starting" in (row.status_reason or "")
    assert "no-such-kernel" in (row.status_reason or "")
    ((action, generation, status, error),) = env.operations(vm_id)
    assert (action, generation, status) == ("create", 1, "failed") and "no-such-kernel" in (
        error or ""
    )
    # not retried over and over: passes leave it in error
    passes = worker.passes
    worker.nudge()
    with contextlib.suppress(AssertionError):
        env.wait_for(vm_id, lambda r: worker.passes > passes, timeout=2)
    assert live_pids_with_uuid({vm_id}) == []
    row = env.row(vm_id)
    assert row is not None and row.status == "error"


# ---- a hung qemu delays only itself -----------------------------------------------------------


def test_a_hung_qemu_does_not_hold_up_the_others(env: Env) -> None:
    hung, healthy = env.create("hung", {"backend": "user"}), env.create("fine", {"backend": "user"})
    worker = env.worker(
        deadlines=ShutdownDeadlines(powerdown=0.5, quit=0.5, sigterm=0.5, sigkill=3)
    )
    rows = {vm: env.wait_for(vm, running) for vm in (hung, healthy)}
    hung_row = rows[hung]
    assert hung_row is not None and hung_row.pid is not None
    os.kill(hung_row.pid, signal.SIGSTOP)  # QMP stops answering, SIGTERM stays pending

    started = time.monotonic()
    env.desire(worker, hung, "update", power_state="stopped")
    env.desire(worker, healthy, "update", power_state="stopped")
    env.wait_for(healthy, lambda r: r is not None and r.status == "stopped", timeout=5)
    healthy_took = time.monotonic() - started
    still = env.row(hung)
    assert still is not None and still.status == "stopping"  # its ladder is still climbing
    env.wait_for(hung, lambda r: r is not None and r.status == "stopped", timeout=10)
    hung_took = time.monotonic() - started
    print(f"healthy VM stopped in {healthy_took:.2f} s, the hung one in {hung_took:.2f} s")
    assert healthy_took < 1.2 and hung_took >= 1.5  # powerdown, quit, SIGTERM each waited out
    assert live_pids_with_uuid({hung, healthy}) == []


def test_a_vm_that_died_while_no_worker_ran_is_not_relaunched_by_policy_never(env: Env) -> None:
    vm_id = env.create("lonely", {"backend": "user"})
    worker = env.worker()
    row = env.wait_for(vm_id, running)
    assert row is not None and row.pid is not None
    worker.stop()
    os.kill(row.pid, signal.SIGKILL)  # the qemu this test's worker started
    env.worker()
    row = env.wait_for(vm_id, lambda r: r is not None and r.status == "crashed", timeout=5)
    assert row is not None and row.pid is None
    assert live_pids_with_uuid({vm_id}) == []


# ---- MTU ------------------------------------------------------------------------------------


def test_bridge_nic_taps_take_the_nic_or_the_bridge_mtu_and_virtio_advertises_it(
    env: Env,
) -> None:
    """A 9000 bridge's VM taps used to get the kernel's 1500. Now a NIC without an MTU gets
    its bridge's, and a virtio NIC's own MTU is both its tap's and qemu's host_mtu (read
    back over QMP: the guest need not boot)."""
    make_bridge(env, mtu=9000)
    vm_id = env.create(
        "jumbo",
        {"backend": "bridge", "bridge": "br0", "mtu": 4000},
        {"backend": "bridge", "bridge": "br0", "model": "e1000"},
        memory_mib=128,
    )
    own, follows = tap_names(env, vm_id)
    worker = env.worker()
    env.wait_for(vm_id, running, timeout=20)
    kernel = links(env.netns)
    assert (kernel[own].mtu, kernel[own].master) == (4000, "br0")
    assert (kernel[follows].mtu, kernel[follows].master) == (9000, "br0")
    host_mtu = worker.execute(
        vm_id, "qom-get", {"path": "/machine/peripheral/nic0", "property": "host_mtu"}
    )
    assert host_mtu == 4000
    env.desire(worker, vm_id, "update", power_state="stopped", stop_mode="kill")
    env.wait_for(vm_id, lambda r: r is not None and r.status == "stopped", timeout=30)
