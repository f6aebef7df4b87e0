"""Blocking until a resource settles, driven by the event bus (no polling loop).

A wait ends early when the daemon starts stopping (app.api.draining): the answer is then
the one a wait that ran out of time gets (202 with the resource as it is), plus Retry-After.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

from fastapi import Response
from sqlalchemy.orm import Session

from app.api.deps import AppContext
from app.api.draining import RETRY_AFTER_SECONDS, Drained, DrainWatch, TimedOut
from app.api.presenters import mutation_headers
from app.bus import Event
from app.db.models import Bridge, Network, Operation, Port, PortForward, Tap, Uplink, Vlan, Vm
from app.domain.status import Status, is_settled
from app.domain.vms import VmStatus, vm_settled
from app.services.operations import reload

R = TypeVar("R", Bridge, Tap, Vm, Network, PortForward, Uplink, Vlan, Port)
W = TypeVar("W")


def _settled(status: str, generation: int, observed_generation: int) -> bool:
    if status in Status._value2member_map_:
        return is_settled(Status(status), generation, observed_generation)
    if status in VmStatus._value2member_map_:
        return vm_settled(VmStatus(status), generation, observed_generation)
    return True  # "deleted": gone for good


def resource_settled(
    row: Bridge | Tap | Vm | Network | PortForward | Uplink | Vlan | Port,
) -> bool:
    return _settled(row.status, row.generation, row.observed_generation)


def event_settles(event: Event) -> bool:
    """Whether an event alone shows its resource settled (or gone)."""
    return _settled(event.status, event.generation, event.observed_generation)


async def _wait(
    ctx: AppContext,
    watch: DrainWatch,
    events: asyncio.Queue[Event | None],
    row: W | None,
    load: Callable[[Session], W | None],
    done: Callable[[W], bool],
    deadline: float,
    event_ends_wait: Callable[[Event], bool] | None,
) -> W | None:
    while row is not None and not done(row):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        event = await watch.get(events, remaining)
        if isinstance(event, TimedOut):
            break
        if isinstance(event, Drained):  # the daemon is stopping: answer with the state now
            return await ctx.read(load)
        if event is None or event_ends_wait is None or event_ends_wait(event):
            row = await ctx.read(load)
    return row


async def wait_until(
    ctx: AppContext,
    resource_id: str,
    load: Callable[[Session], W | None],
    done: Callable[[W], bool],
    timeout: float,
    event_ends_wait: Callable[[Event], bool] | None = None,
) -> W | None:
    """Read via `load` until `done` (or the row is gone: None) or `timeout` passes; returns
    the last row read. Between reads it sleeps on the resource's events; with
    `event_ends_wait` only an event that may end the wait triggers a read. Returns at once
    when the daemon is stopping."""
    deadline = time.monotonic() + timeout
    # subscribe first: no event slips past
    with ctx.bus.subscribe(resource_id) as events:
        async with ctx.drain.watch() as watch:
            row = await ctx.read(load)
            return await _wait(ctx, watch, events, row, load, done, deadline, event_ends_wait)


async def settle_response(
    ctx: AppContext,
    response: Response,
    collection: str,
    row: R,
    operation: Operation | None,
    wait: float | None,
    settled_status: int,
    load: Callable[[Session], R | None] | None = None,
) -> R | Response:
    """The common end of every mutation: announce it, wake the supervisor, optionally wait
    for it to settle, and answer settled_status once settled, 202 while pending, or 204 when
    a waited-for delete finished. Returns the row to present, or the 204 response."""
    if load is None:
        load = lambda session: reload(session, row)  # noqa: E731
    mutation_headers(response, collection, row.id, operation)
    if not wait:
        _announce(ctx, row, operation)
    elif operation is None:  # nothing changed now, but an earlier change may be under way
        waited = await wait_until(ctx, row.id, load, resource_settled, wait, event_settles)
        if waited is None:
            return Response(status_code=204, headers=dict(response.headers))
        row = waited
    else:
        # Subscribed first, so no later event slips past. But another request's nudge may
        # have let a worker act on this row between our commit and the subscription: then
        # an event about this generation exists already, and the row is read again.
        with ctx.bus.subscribe(row.id) as events:
            async with ctx.drain.watch() as watch:
                earlier = ctx.bus.last_for(row.id)
                _announce(ctx, row, operation)
                deadline = time.monotonic() + wait
                current: R | None = row
                if earlier is not None and earlier.generation >= row.generation:
                    current = await ctx.read(load)
                waited = await _wait(
                    ctx, watch, events, current, load, resource_settled, deadline, event_settles
                )
        if waited is None:
            return Response(status_code=204, headers=dict(response.headers))
        row = waited
    response.status_code = settled_status if resource_settled(row) else 202
    if response.status_code == 202 and ctx.drain.begun:
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)  # RFC 9110 10.2.3
    return row


def _announce(
    ctx: AppContext,
    row: Bridge | Tap | Vm | Network | PortForward | Uplink | Vlan | Port,
    operation: Operation | None,
) -> None:
    """Publish our own transition (to pending/deleting) before the supervisor can publish
    the next one, then wake it."""
    if operation is not None:
        ctx.bus.publish(**row.event_fields(operation.resource))
        # a forced delete changed other kinds too (VMs stopped, forwards, taps): wake all
        ctx.nudger.nudge(None if operation.detached else operation.resource)
