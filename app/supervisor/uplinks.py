"""Bridge uplinks, reconciled on the supervisor thread right after the links (the move changes
the bridge's addresses and MAC, so nothing else may touch the bridge meanwhile).

Every move is journaled: before the first change the row says `phase=moving` with the NIC's
configuration as it was (`saved`) and the bridge's MAC. A restart that finds `moving` or
`restoring` first restores the saved configuration (idempotently), so the host ends either
moved or restored, never half. A move is kept only when the probe address (default: the
gateway) answers through the bridge; otherwise it is rolled back and the uplink reports why.
A refused or rolled-back move is not retried on its own: a new PUT retries it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from app.bus import EventBus
from app.db.models import Bridge, Uplink
from app.db.repositories import (
    FinishedOperation,
    OperationRepository,
    UplinkRepository,
    release_uplink_subinterfaces,
)
from app.db.session import Database
from app.domain.status import Status
from app.domain.uplinks import JournalError, NicConfig, dhcp_refusal
from app.host import uplink
from app.host.uplink import MoveLog, UplinkError
from app.supervisor.faults import FaultLog, describe

log = logging.getLogger(__name__)

MOVING, ATTACHED, RESTORING, DETACHED = "moving", "attached", "restoring", "detached"


@dataclass
class UplinkWork:
    """An uplink row and its bridge as one pass sees them."""

    id: str
    interface: str
    deleted: bool
    generation: int
    observed_generation: int
    status: str
    phase: str
    saved: dict[str, Any] | None
    bridge_mac_before: str | None
    permanent_mac: str | None
    probe_address: str | None
    probe_timeout: float
    take_mac: bool
    dhcp: str
    bridge: str
    bridge_pinned_mac: str | None
    bridge_ready: str | None  # why the bridge is not ready yet (None: it is)

    @property
    def nic(self) -> NicConfig | None:
        return NicConfig.from_json(self.saved) if self.saved is not None else None


class UplinkReconciler:
    def __init__(
        self,
        db: Database,
        bus: EventBus,
        ipr: IPRoute,
        probe: Callable[[str, float], bool] = uplink.probe,
        on_gone: Callable[[], None] = lambda: None,
        on_moved: Callable[[str], None] = lambda bridge: None,
    ) -> None:
        self.db = db
        self.bus = bus
        self.ipr = ipr
        self.probe = probe
        self.on_gone = on_gone  # a bridge may have waited for its uplink to go
        # a move or restore changed what the bridge's spec says (MAC, MTU): the link pass
        # brings the rest of the bridge in line
        self.on_moved = on_moved
        self.faults = FaultLog(log)

    def run(self, full: bool) -> None:
        for work in self._load(full):
            try:
                self._reconcile(work, full)
            except (UplinkError, NetlinkError, OSError) as exc:
                # the journal still says what was being done: the next pass picks it up
                log.warning("uplink %s of %s: %s", work.interface, work.bridge, exc)
                self._settle(work, Status.ERROR, str(exc))
            except JournalError as exc:  # only this uplink: check the NIC by hand
                self.faults.failed(work.id, f"uplink {work.interface} of {work.bridge}", exc)
                self._settle(work, Status.ERROR, f"uplink journal: {exc}")
            except Exception as exc:  # unexpected: this uplink only (the journal stays)
                self.faults.failed(work.id, f"uplink {work.interface} of {work.bridge}", exc)
                self._settle(work, Status.ERROR, describe(exc))
            else:
                self.faults.succeeded(work.id, f"uplink {work.interface} of {work.bridge}")

    # ---- loading ---------------------------------------------------------------------------

    def _load(self, full: bool) -> list[UplinkWork]:
        with self.db.reading() as session:
            # a move or a restore that a crash interrupted is unsettled too
            found = UplinkRepository(session).with_bridges(not full, (MOVING, RESTORING))
            return [_work(row, bridge) for row, bridge in found]

    # ---- one uplink ------------------------------------------------------------------------

    def _reconcile(self, work: UplinkWork, full: bool) -> None:
        if work.phase in (MOVING, RESTORING):  # a crash interrupted a move or a restore
            if not self.faults.failing(work.id):  # else said once already
                log.warning("uplink %s: an interrupted %s; restoring", work.interface, work.phase)
            self._restore(work)
            work.phase = DETACHED
        if work.deleted:
            if work.phase == ATTACHED:
                self._journal(work, RESTORING)
                self._restore(work)
            self._forget(work)
            return
        if work.phase == ATTACHED:
            self._keep_attached(work, full)
            return
        settled_error = (
            work.status == Status.ERROR.value and work.generation == work.observed_generation
        )
        if settled_error:
            return  # refused or rolled back: a new PUT retries
        if work.bridge_ready is not None:
            self._settle(work, Status.PENDING, work.bridge_ready, settled=False)
            return
        self._attach(work)

    def _attach(self, work: UplinkWork) -> None:
        name = self._present_name(work)
        nic = uplink.uplink_candidate(self.ipr, name)
        refusal = dhcp_refusal(nic) if work.dhcp == "refuse" else None
        if refusal is not None:
            self._settle(work, Status.ERROR, refusal)
            return
        target = work.probe_address or nic.gateway
        if target is None:
            reason = f"{name} has no default gateway to probe: name a probe_address"
            self._settle(work, Status.ERROR, reason)
            return
        bridge = uplink.link_facts(self.ipr, work.bridge)
        if bridge is None:
            self._settle(work, Status.PENDING, f"bridge {work.bridge} does not exist yet", False)
            return
        take = nic.mac if work.take_mac and not work.bridge_pinned_mac else None
        work.saved, work.bridge_mac_before = nic.to_json(), bridge.mac if take else None
        work.permanent_mac = nic.permanent_mac or nic.mac
        self._journal(work, MOVING)  # committed before the first change
        say = MoveLog()
        try:
            uplink.attach(self.ipr, nic, work.bridge, take, say)
            reachable = self.probe(target, work.probe_timeout)
        except Exception as exc:
            log.warning("uplink %s: the move failed (%s); rolling back", name, exc)
            where = say.steps[-1] if say.steps else "the start"
            self._roll_back(work, say, f"the move failed at '{where}': {exc}")
            return
        if not reachable:
            reason = (
                f"{target} did not answer through {work.bridge} within "
                f"{work.probe_timeout:g} s; everything was rolled back"
            )
            self._roll_back(work, say, reason)
            return
        work.phase = ATTACHED
        self._journal(work, ATTACHED, steps=say.steps)
        self._settle(work, Status.ACTIVE, None)

    def _roll_back(self, work: UplinkWork, say: MoveLog, reason: str) -> None:
        self._restore(work, say)
        work.phase = DETACHED
        self._journal(work, DETACHED, steps=say.steps, keep_saved=True)
        self._settle(work, Status.ERROR, reason)

    def _restore(self, work: UplinkWork, say: MoveLog | None = None) -> None:
        nic = work.nic
        if nic is None:
            return  # nothing was ever moved
        say = say if say is not None else MoveLog()
        restored = NicConfig(**{**nic.__dict__, "name": self._present_name(work)})
        uplink.restore(self.ipr, restored, work.bridge, work.bridge_mac_before, say)
        work.phase = DETACHED
        self._journal(work, DETACHED, steps=say.steps, keep_saved=True)

    def _keep_attached(self, work: UplinkWork, full: bool) -> None:
        """An attached uplink whose NIC left the bridge (by hand) is enslaved again."""
        nic = uplink.link_facts(self.ipr, self._present_name(work))
        bridge = uplink.link_facts(self.ipr, work.bridge)
        if nic is None or bridge is None:
            self._settle(work, Status.ERROR, f"{work.interface} or {work.bridge} is gone")
            return
        if nic.master != bridge.index:
            log.warning("uplink %s left %s; enslaving it again", nic.name, work.bridge)
            self.ipr.link("set", index=nic.index, master=bridge.index, state="up")
        self._settle(work, Status.ACTIVE, None)

    def _present_name(self, work: UplinkWork) -> str:
        """The NIC's name now: found by its permanent MAC if it was renamed. The recorded
        name is checked first (one link get): only when it no longer carries that MAC are all
        links dumped, which with a thousand links cost as much as the rest of a full pass
        (bench/vlans.py)."""
        if work.permanent_mac:
            named = uplink.link_facts(self.ipr, work.interface)
            # find_by_mac's rule: not a bridge; the permanent MAC, else (a NIC without one)
            # the current one
            if (
                named is not None
                and named.kind != "bridge"
                and (named.permanent_mac or named.mac) == work.permanent_mac
            ):
                return work.interface
            found = uplink.find_by_mac(self.ipr, work.permanent_mac)
            if found is not None:
                return found
        return work.interface

    # ---- writing ---------------------------------------------------------------------------

    def _journal(
        self,
        work: UplinkWork,
        phase: str,
        steps: list[str] | None = None,
        keep_saved: bool = False,
    ) -> None:
        with self.db.unit_of_work() as session:
            row = UplinkRepository(session).get(work.id)
            if row is None:
                return
            row.phase = phase
            if phase == MOVING:
                row.saved = work.saved
                row.bridge_mac_before = work.bridge_mac_before
                row.permanent_mac = work.permanent_mac
            elif phase == DETACHED and not keep_saved:
                row.saved = None
            if steps is not None:
                row.steps = steps
        if phase in (ATTACHED, DETACHED):
            self.on_moved(work.bridge)

    def _settle(
        self, work: UplinkWork, status: Status, reason: str | None, settled: bool = True
    ) -> None:
        with self.db.unit_of_work() as session:
            row = UplinkRepository(session).get(work.id)
            if row is None:
                return
            before = (row.status, row.status_reason, row.observed_generation)
            current = row.generation == work.generation
            wanted = status if current else Status.PENDING
            row.status = Status.DELETING.value if row.deleted else wanted.value
            row.status_reason = reason
            if settled:
                row.observed_generation = work.generation
            if (row.status, row.status_reason, row.observed_generation) == before:
                return
            if settled and current and not row.deleted:
                outcome = "succeeded" if status is Status.ACTIVE else "failed"
                OperationRepository(session).finish(
                    [FinishedOperation(row.id, work.generation, outcome, reason)]
                )
            event = row.event_fields("uplink")
        self.bus.publish(**event)

    def _forget(self, work: UplinkWork) -> None:
        with self.db.unit_of_work() as session:
            uplinks = UplinkRepository(session)
            row = uplinks.get(work.id)
            if row is None:
                return
            OperationRepository(session).finish(
                [FinishedOperation(row.id, row.generation, "succeeded")]
            )
            event = row.event_fields(
                "uplink", "deleted", status="deleted", observed_generation=row.generation
            )
            # the link pass removed its `<uplink>.<vid>` links (bridge_per_vlan VLANs) in
            # this pass, before the move back; their names are free again
            release_uplink_subinterfaces(session, row)
            uplinks.remove(row)
        self.bus.publish(**event)
        self.on_gone()


def _work(row: Uplink, bridge: Bridge) -> UplinkWork:
    ready = None
    if bridge.status != Status.ACTIVE.value or bridge.observed_generation != bridge.generation:
        ready = f"waiting for bridge {bridge.name} ({bridge.status})"
    return UplinkWork(
        id=row.id,
        interface=row.name,
        deleted=row.deleted,
        generation=row.generation,
        observed_generation=row.observed_generation,
        status=row.status,
        phase=row.phase,
        saved=row.saved,
        bridge_mac_before=row.bridge_mac_before,
        permanent_mac=row.permanent_mac,
        probe_address=row.probe_address,
        probe_timeout=row.probe_timeout,
        take_mac=row.take_mac,
        dhcp=row.dhcp,
        bridge=bridge.ifname,  # the kernel name: every step works on the link
        bridge_pinned_mac=bridge.mac,
        bridge_ready=None if bridge.deleted else ready,
    )
