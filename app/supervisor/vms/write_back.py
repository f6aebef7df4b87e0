"""Status write-back: what a pass observed goes onto the VM rows in one transaction (a row
whose generation moved on meanwhile is not marked applied), operations are finished, and
the events go out after the commit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.db.models import Vm
from app.db.repositories import FinishedOperation, OperationRepository, VmRepository
from app.db.session import Session
from app.supervisor.vms.base import WorkerBase
from app.supervisor.vms.state import SETTLED_OK, Report, VmState, _user_of, log


class WriteBack(WorkerBase):
    """The pass's reports onto the rows, in one transaction, then the events."""

    def _write_back(self, rows: Sequence[Vm], reports: dict[str, Report]) -> None:
        """One transaction for everything that changed, then the events."""
        changed = [row for row in rows if _differs(row, reports[row.id], self._vms[row.id])]
        events: list[dict[str, Any]] = []
        finished: list[FinishedOperation] = []
        written: list[tuple[VmState, int]] = []
        if changed:
            with self.db.unit_of_work() as session:
                for loaded in changed:
                    row = VmRepository(session).get(loaded.id)
                    if row is None:
                        continue
                    state = self._vms[row.id]
                    if row.deleted and state.removed:
                        events.append(self._delete_rows(session, row, finished))
                        continue
                    report = reports[row.id]
                    event = _record(row, report, loaded.generation, finished)
                    written.append((state, state.new_restarts))
                    if event is not None:
                        events.append(event)
                OperationRepository(session).finish(finished)
            for state, restarts in written:
                state.new_restarts -= restarts
        for row in rows:  # what QMP events carry
            state = self._vms[row.id]
            report = reports[row.id]
            state.event_fields = row.event_fields(
                "vm", status=report.status.value, status_reason=report.reason
            )
        for event in events:
            self.bus.publish(**event)

    def _delete_rows(
        self, session: Session, row: Vm, finished: list[FinishedOperation]
    ) -> dict[str, Any]:
        VmRepository(session).forget(row.id)
        finished.append(FinishedOperation(row.id, row.generation, "succeeded"))
        log.info("VM %s (%s) removed", row.name, row.id)
        return row.event_fields(
            "vm",
            "deleted",
            status="deleted",
            status_reason=None,
            observed_generation=row.generation,
        )


def _differs(row: Vm, report: Report, state: VmState) -> bool:
    if row.deleted and state.removed:
        return True
    return (
        (row.status, row.status_reason) != (report.status.value, report.reason)
        or (row.pid, row.accelerator_used, row.started_at)
        != (report.pid, report.accelerator_used, report.started_at)
        or (row.exit_code, row.last_output, row.restarts)
        != (report.exit_code, report.last_output, report.restarts)
        or (row.launched_generation, _user_of(row)) != (report.launched_generation, report.user)
        or (report.settled and row.observed_generation != row.generation)
    )


def _record(
    row: Vm, report: Report, loaded_generation: int, finished: list[FinishedOperation]
) -> dict[str, Any] | None:
    """Write a report onto its row; the event to publish when the status changed."""
    before = (row.status, row.status_reason, row.observed_generation)
    row.status = report.status.value
    row.status_reason = report.reason
    row.pid = report.pid
    row.accelerator_used = report.accelerator_used
    row.started_at = report.started_at
    row.exit_code = report.exit_code
    row.last_output = report.last_output
    row.restarts = report.restarts
    row.launched_generation = report.launched_generation
    row.observed_uid, row.observed_gid = report.user if report.user else (None, None)
    # a newer generation arrived while we decided: it is not applied yet
    newly_applied = row.observed_generation != loaded_generation
    if report.settled and row.generation == loaded_generation and newly_applied:
        row.observed_generation = loaded_generation
        # a PATCH (no power intent) succeeded once stored and seen, whatever the VM's status
        patched = row.intent_generation < loaded_generation
        if report.status in SETTLED_OK or patched:
            finished.append(FinishedOperation(row.id, loaded_generation, "succeeded"))
        else:
            reason = report.reason or report.status.value
            finished.append(FinishedOperation(row.id, loaded_generation, "failed", reason))
    if (row.status, row.status_reason, row.observed_generation) == before:
        return None
    return row.event_fields("vm")
