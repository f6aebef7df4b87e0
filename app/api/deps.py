"""What routers receive: the app context, the request id, and helpers that run a service
call in one unit of work on a worker thread (SQLite and netlink calls block)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from fastapi import Query, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.api.draining import Drain
from app.bus import EventBus
from app.db.session import Database
from app.domain.cursors import CURSOR_MAX, CURSOR_PATTERN
from app.domain.isolation import port_isolation_missing
from app.domain.networks import HostPrefix
from app.domain.vlans import VlanFacts
from app.services.ports import HostInspector, Nudger, VmControl

T = TypeVar("T")

MAX_WAIT = 600.0


@dataclass
class AppContext:
    db: Database
    bus: EventBus
    nudger: Nudger
    inspector: HostInspector
    is_ready: Callable[[], bool]
    vm_control: VmControl
    drain: Drain = field(default_factory=Drain)  # begun when the daemon starts stopping

    async def read(self, fn: Callable[[Session], T]) -> T:
        """Run a read on the event loop itself: a WAL read never waits for a lock and takes
        ~0.2 ms, less than the hop to a worker thread costs (measured, bench/taps.py)."""
        return self._reading(fn)

    async def mutate(self, fn: Callable[[Session], T]) -> T:
        """Run `fn` in its own transaction (committed when this returns). The caller then
        announces the change and nudges the supervisor (waiting.settle_response)."""
        return await run_in_threadpool(self._in_unit_of_work, fn)

    async def host(self, fn: Callable[..., T], *args: Any) -> T:
        return await run_in_threadpool(fn, *args)

    async def prefixes_for(self, addresses: Sequence[str] | None) -> list[HostPrefix]:
        """The host's addresses and connected routes, for the clash check of the IPv4
        `addresses` a request puts on a link (none asked: nothing to check, no netlink)."""
        if not any(":" not in a for a in addresses or ()):
            return []
        return await self.host(self.inspector.host_prefixes)

    async def vlan_facts_for(self, vlan: str | None) -> VlanFacts | None:
        """The probed kernel's VLAN features, where a request names a VLAN (so that naming
        one on a host that can carry none says why: app.domain.vlans.no_vlan_can_exist);
        None, with no probe, where it names none."""
        if vlan is None:
            return None
        capabilities = await self.host(self.inspector.capabilities)
        return VlanFacts.from_link_probe(capabilities["links"])

    async def isolation_missing_for(self, isolated: bool | None) -> str | None:
        """Why the probed kernel cannot isolate bridge ports, where a request asks for
        isolation (app.domain.isolation); None where it can, or where nothing asks."""
        if not isolated:
            return None
        capabilities = await self.host(self.inspector.capabilities)
        return port_isolation_missing(capabilities["links"])

    def _in_unit_of_work(self, fn: Callable[[Session], T]) -> T:
        with self.db.unit_of_work() as session:
            return fn(session)

    def _reading(self, fn: Callable[[Session], T]) -> T:
        with self.db.reading() as session:
            return fn(session)


def context(request: Request) -> AppContext:
    """The app's context. Endpoints take the Request and call this rather than declaring a
    FastAPI dependency: each dependency cost ~0.3 ms per request here (measured)."""
    ctx: AppContext = request.app.state.context
    return ctx


def request_id_of(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


Wait = Annotated[
    float | None,
    Query(
        ge=0,
        le=MAX_WAIT,
        allow_inf_nan=False,  # nan compares false with both bounds: "a finite number"
        description=f"Seconds (a finite number 0-{MAX_WAIT:g}, fractions allowed) to block "
        "until the change has settled (applied or failed); then the answer is the settled "
        "status (200/201/204). Without it, or when it runs out first, the answer is 202 at "
        "once. A wait pending when the daemon stops answers at once: 202 with the current "
        "state and Retry-After.",
    ),
]
Limit = Annotated[int, Query(ge=1, le=1000, description="Page size")]
Force = Annotated[
    bool,
    Query(
        description="Delete even while other resources depend on it: each dependent is "
        "detached, removed or deleted with it (see the operation's `detached`). Without it "
        "such a delete is refused with 409 `in-use` listing the dependents."
    ),
]
Cursor = Annotated[
    str | None,
    Query(
        max_length=CURSOR_MAX,
        description="A page's next_cursor, to list the items after it",
        json_schema_extra={"pattern": CURSOR_PATTERN},
    ),
]
