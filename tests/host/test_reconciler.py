"""The link reconciler against a real kernel namespace and a real SQLite database.

Covers what the planner's unit tests cannot: ioctl/netlink effects, the create-intent journal
(a crash between create and mark), foreign links, orphans and re-creation of tap flags.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import delete, text

from app.bus import EventBus
from app.db.models import Bridge, LinkName, Tap, Vm, VmNic, new_id
from app.db.session import Database
from app.domain.retry import Backoff
from app.host.netlink import LinkOps
from app.host.netns import call_in as in_netns
from app.supervisor.links import LinkReconciler, Scope
from tests.db_template import seeded_database_file
from tests.netns_tools import ip, links


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{seeded_database_file(tmp_path / 'kvmnetd.db')}")
    yield database
    database.dispose()


def add_tap(db: Database, name: str, **fields: object) -> str:
    tap_id = new_id()
    with db.unit_of_work() as s:
        s.add(LinkName(name=name, resource="tap", resource_id=tap_id))
        s.add(Tap(id=tap_id, name=name, ifname=name, **{"addresses": [], **fields}))
    return tap_id


def add_bridge(db: Database, name: str, **fields: object) -> str:
    bridge_id = new_id()
    with db.unit_of_work() as s:
        s.add(LinkName(name=name, resource="bridge", resource_id=bridge_id))
        s.add(Bridge(id=bridge_id, name=name, ifname=name, **{"addresses": [], **fields}))
    return bridge_id


def full_pass(db: Database, ns: str, bus: EventBus | None = None) -> None:
    def run() -> None:
        with LinkOps() as ops:
            LinkReconciler(db, bus or EventBus(), ops, Backoff(time.monotonic)).run(Scope.FULL)

    in_netns(ns, run)


def tap_row(db: Database, tap_id: str) -> Tap:
    with db.unit_of_work() as s:
        row = s.get(Tap, tap_id)
        assert row is not None
        return row


def test_create_then_nothing_to_do(db: Database, netns: str) -> None:
    bridge_id = add_bridge(db, "br0", addresses=["10.0.0.1/24"])
    tap_id = add_tap(db, "tap1", bridge_id=bridge_id, owner_uid=65534, vnet_hdr=True)
    full_pass(db, netns)
    kernel = links(netns)
    assert kernel["tap1"].master == "br0"
    assert kernel["tap1"].info["IFLA_TUN_VNET_HDR"] == 1
    assert kernel["br0"].addresses[0] == "10.0.0.1/24"
    row = tap_row(db, tap_id)
    assert (row.status, row.observed_generation, row.create_intent) == ("active", 1, False)
    bus = EventBus()
    # a second pass changes nothing; it may only record what the kernel changed on its own
    # since (the bridge's operational state follows its port a moment later)
    full_pass(db, netns, bus)
    assert links(netns)["tap1"].index == kernel["tap1"].index
    assert {e.type for e in bus.since(0)} <= {"bridge.observed", "tap.observed"}
    # the kernel may still be settling the bridge's operational state on a loaded machine:
    # within a few passes, passes become quiet (nothing written, nothing said) and stay so
    for _ in range(5):
        bus = EventBus()
        full_pass(db, netns, bus)
        if bus.last_id == 0:
            break
        assert {e.type for e in bus.since(0)} <= {"bridge.observed", "tap.observed"}
        time.sleep(0.2)
    bus = EventBus()
    full_pass(db, netns, bus)
    assert bus.last_id == 0


def test_interrupted_create_is_adopted(db: Database, netns: str) -> None:
    """The daemon died after creating the tap but before marking it: the journal proves
    the link is ours, so it is adopted (same ifindex), not reported as foreign."""
    tap_id = add_tap(db, "tap1", create_intent=True)
    ip(netns, "tuntap", "add", "dev", "tap1", "mode", "tap")
    before = links(netns)["tap1"]
    assert before.alias is None
    full_pass(db, netns)
    after = links(netns)["tap1"]
    assert after.index == before.index
    assert after.alias == f"kvmnetd:tap:{tap_id}"
    assert after.up
    assert tap_row(db, tap_id).status == "active"


def test_foreign_link_is_left_alone_and_reported(db: Database, netns: str) -> None:
    ip(netns, "link", "add", "tap1", "type", "bridge")
    before = links(netns)["tap1"]
    tap_id = add_tap(db, "tap1")
    full_pass(db, netns)
    after = links(netns)["tap1"]
    assert (after.index, after.kind, after.alias, after.up) == (before.index, "bridge", None, False)
    row = tap_row(db, tap_id)
    assert row.status == "error"
    assert row.status_reason is not None and "not managed by kvmnetd" in row.status_reason
    assert not row.create_intent
    ip(netns, "link", "del", "tap1")
    full_pass(db, netns)  # the name is free now: the next resync creates ours
    assert links(netns)["tap1"].alias == f"kvmnetd:tap:{tap_id}"
    assert tap_row(db, tap_id).status == "active"


def test_orphans_are_swept_foreign_links_survive(db: Database, netns: str) -> None:
    ip(netns, "tuntap", "add", "dev", "orphan1", "mode", "tap")
    ip(netns, "link", "set", "orphan1", "alias", f"kvmnetd:tap:{new_id()}")
    ip(netns, "link", "add", "foreign0", "type", "bridge")
    ip(netns, "link", "set", "foreign0", "alias", "uplink bridge")
    ip(netns, "tuntap", "add", "dev", "plain0", "mode", "tap")
    full_pass(db, netns)
    kernel = links(netns)
    assert "orphan1" not in kernel
    assert kernel["foreign0"].alias == "uplink bridge"
    assert "plain0" in kernel


def test_changing_a_creation_only_flag_recreates_the_tap(db: Database, netns: str) -> None:
    tap_id = add_tap(db, "tap1")
    full_pass(db, netns)
    assert links(netns)["tap1"].info["IFLA_TUN_MULTI_QUEUE"] == 0
    with db.unit_of_work() as s:
        row = s.get(Tap, tap_id)
        assert row is not None
        row.multi_queue = True
        row.generation += 1
        row.status = "pending"
    full_pass(db, netns)
    assert links(netns)["tap1"].info["IFLA_TUN_MULTI_QUEUE"] == 1
    assert tap_row(db, tap_id).observed_generation == 2


def test_deleted_bridge_still_referenced_waits_instead_of_failing_the_pass(
    db: Database, netns: str
) -> None:
    """Issue 9: a bridge row deleted while a NIC of a VM on its way out still points at it.
    The pass must not fail on the foreign key (the whole write-back rolled back, pass after
    pass, while every other link waited): the bridge goes from the kernel, its row waits
    with the reason, other links settle, and the row goes once the VM's rows are gone."""
    bridge_id = add_bridge(db, "br0")
    full_pass(db, netns)
    vm_id = new_id()
    with db.unit_of_work() as s:
        s.add(Vm(id=vm_id, name="web", deleted=True, status="deleting", boot={}))
        s.add(
            VmNic(
                vm_id=vm_id,
                position=0,
                mac="52:54:00:00:00:01",
                backend="bridge",
                bridge_id=bridge_id,
                tap_name="kvweb-0",
            )
        )
        row = s.get(Bridge, bridge_id)
        assert row is not None
        row.deleted, row.status, row.generation = True, "deleting", row.generation + 1
    tap_id = add_tap(db, "tap1")  # another link to settle in the same pass
    full_pass(db, netns)
    assert "br0" not in links(netns)
    assert "tap1" in links(netns) and tap_row(db, tap_id).status == "active"
    with db.unit_of_work() as s:
        row = s.get(Bridge, bridge_id)
        assert row is not None and row.status == "deleting"
        assert row.status_reason is not None and "vm_nic web/0" in row.status_reason
        s.execute(delete(VmNic).where(VmNic.vm_id == vm_id))
        s.execute(delete(Vm).where(Vm.id == vm_id))
    full_pass(db, netns)
    with db.unit_of_work() as s:
        assert s.get(Bridge, bridge_id) is None


REFUSE_TAP2 = """
CREATE TRIGGER refuse_tap2_active BEFORE UPDATE OF status ON taps
WHEN NEW.name = 'tap2' AND NEW.status = 'active'
BEGIN SELECT RAISE(ABORT, 'tap2 may not be active (a trigger of the test)'); END
"""


def test_one_row_the_database_refuses_backs_off_alone(db: Database, netns: str) -> None:
    """The write-back of a pass is one transaction; when the database refuses it (here a
    real trigger refuses tap2's row going active), every other link's status still lands,
    tap2 says why and backs off on its own, and the pass ends normally. Once the database
    accepts it again, tap2's retry records it."""
    bridge_id = add_bridge(db, "br0")
    tap_ids = {n: add_tap(db, n, bridge_id=bridge_id) for n in ("tap1", "tap2", "tap3")}
    with db.unit_of_work() as s:
        s.execute(text(REFUSE_TAP2))
    now = [100.0]
    backoff = Backoff(lambda: now[0])
    bus = EventBus()

    def passes() -> None:
        with LinkOps() as ops:
            reconciler = LinkReconciler(db, bus, ops, backoff)
            reconciler.run(Scope.FULL)  # raised the database's refusal before
            assert backoff.attempts(tap_ids["tap2"]) == 1
            assert not backoff.due(tap_ids["tap2"])
            with db.unit_of_work() as s:
                s.execute(text("DROP TRIGGER refuse_tap2_active"))
            now[0] += 60  # past tap2's backoff: the next DIRTY pass retries it
            reconciler.run(Scope.DIRTY)
            assert backoff.attempts(tap_ids["tap2"]) == 0

    in_netns(netns, passes)
    kernel = links(netns)
    assert all(kernel[n].master == "br0" for n in tap_ids)
    for name, tap_id in tap_ids.items():
        row = tap_row(db, tap_id)
        assert (row.status, row.status_reason) == ("active", None), (name, row.status_reason)
    with db.unit_of_work() as s:
        bridge = s.get(Bridge, bridge_id)
        assert bridge is not None and bridge.status == "active"
    events = [(e.type, e.name, e.status_reason) for e in bus.since(0)]
    refused = [e for e in events if e[1] == "tap2" and e[0] == "tap.pending"]
    assert refused and "retrying with backoff" in (refused[0][2] or ""), events
    assert "tap2 may not be active" in (refused[0][2] or "")
    assert [e[0] for e in events if e[1] == "tap2"][-1] == "tap.active", events
    assert ("tap.active", "tap1", None) in events and ("tap.active", "tap3", None) in events
