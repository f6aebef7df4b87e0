"""What routers receive: the app context, the request id, and helpers that run a service
call in one unit of work on a worker thread (SQLite and netlink calls block)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
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
from app.domain.neutron import NeutronConfig
from app.domain.tenancy import Caller, Principal
from app.domain.vlans import VlanFacts
from app.services.ports import HostInspector, Nudger, VmControl
from app.services.scoping import require_admin

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
    # where a non-admin's boot files must lie (settings: tenant_images_dir); None: nowhere
    tenant_images: Path | None = None
    drain: Drain = field(default_factory=Drain)  # begun when the daemon starts stopping
    # the Neutron API's physical networks and tenant network type (settings)
    neutron: NeutronConfig = field(default_factory=NeutronConfig)
    # the time now, timezone-aware UTC: token expiry and state (tests put the clock ahead)
    clock: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))

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


def principal_of(request: Request) -> Principal:
    """Who the request acts as (app.api.middleware.AuthMiddleware set it). Paths open
    without a token (health, the API's description) have none: asking there is a bug."""
    principal: Principal = request.state.principal
    return principal


def caller_of(request: Request) -> Caller:
    """Who asks and under which request id: what services record and scope by."""
    return Caller(principal_of(request), request_id_of(request))


def admin_only(request: Request) -> None:
    """A route (or router) dependency: 403 for a member or reader (the host's own views,
    uplinks: provider-level things, issue 11)."""
    require_admin(caller_of(request), f"{request.method} {request.url.path}")


ProjectFilter = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=64,
        description="Only the resources of this project (its id or name). An admin may name "
        "any project (without it an admin sees every project); a member or reader only its "
        "own (any other is 404, as an unknown one).",
    ),
]


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
