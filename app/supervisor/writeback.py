"""Writing a pass's observed state back to the database, shared by the link pass
(app.supervisor.links) and the VLAN pass (app.supervisor.vlans).

A pass records every row's result in one transaction. When the database refuses that
transaction (a row it will not delete, a constraint or trigger nobody foresaw), or recording
one row's result raises anything else (a bug: a KeyError about one port must not cost every
other row its status), every result is written again in a transaction of its own, so that
the failure stays on the row it concerns: that row says why (`retrying with backoff: ...`)
and backs off, and every other row's status lands. A failed attempt leaves the retry
bookkeeping (app.domain.retry.Backoff) as it was before the attempt, so a result written
twice (once in the failed bulk, once alone) counts once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

from app.bus import EventBus
from app.db.models import ResourceColumns
from app.db.session import Database, Session
from app.domain.retry import Backoff
from app.supervisor.faults import FaultLog, describe

R = TypeVar("R")  # one row's result

# writes the results it is given in one transaction; returns how many rows it reported on
Write = Callable[[Mapping[str, R]], int]
# the row of an id in a session, and the resource name its events carry ("tap", "vlan")
LoadRow = Callable[[Session, str], tuple[ResourceColumns, str] | None]


def write_each_on_refusal(
    results: Mapping[str, R],
    write: Write[R],
    refused: Callable[[str, Exception], int],
    backoff: Backoff,
) -> int:
    """`write(results)` in one transaction; when it fails (the database refuses it, or
    anything else raises), each result alone, and `refused(id, error)` for each one that
    fails on its own. Returns how many rows were reported on."""
    if not results:
        return 0
    before = backoff.snapshot()
    try:
        return write(results)
    except Exception as exc:  # the database's refusal, or a bug about one row
        backoff.restore(before)
        if len(results) == 1:
            return refused(next(iter(results)), exc)
    written = 0
    for row_id, result in results.items():
        before = backoff.snapshot()
        try:
            written += write({row_id: result})
        except Exception as exc:
            backoff.restore(before)
            written += refused(row_id, exc)
    return written


class RefusalRecorder:
    """Says on a row that what a pass wrote for it failed (the database refused it, or a
    bug raised), and backs it off (logged at a bounded rate: app.supervisor.faults)."""

    def __init__(
        self, db: Database, bus: EventBus, backoff: Backoff, faults: FaultLog, load: LoadRow
    ) -> None:
        self.db = db
        self.bus = bus
        self.backoff = backoff
        self.faults = faults
        self.load = load

    def __call__(self, row_id: str, exc: Exception) -> int:
        """The row says `retrying with backoff: <the refusal>` (one event, the first time);
        returns 1 when it changed, else 0."""
        self.backoff.failed(row_id)
        with self.db.unit_of_work() as session:
            loaded = self.load(session, row_id)
            if loaded is None:  # gone meanwhile: nothing to say it on
                return 0
            row, resource = loaded
            self.faults.failed(row_id, f"recording {resource} {row.name}", exc)
            reason = f"retrying with backoff: {describe(exc)}"
            if row.status_reason == reason:
                return 0
            row.status_reason = reason
            event = row.event_fields(resource)
        self.bus.publish(**event)
        return 1
