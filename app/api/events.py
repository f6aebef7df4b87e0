"""/v1/events: every state change as server-sent events (`curl -N` follows it).

When the daemon stops, the stream ends with a `shutdown` event carrying an SSE `retry`
(milliseconds): EventSource clients reconnect after it, with Last-Event-ID, to the
restarted daemon (the WHATWG HTML standard, "Server-sent events", 9.2.6).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from sse_starlette.sse import EventSourceResponse

from app.api.deps import ProjectFilter, caller_of, context
from app.api.draining import Drained
from app.api.strict import StrictRoute
from app.bus import Event, EventBus
from app.schemas.common import PROBLEM_RESPONSES
from app.services.scoping import list_scope
from app.services.tokens import still_live

router = APIRouter(
    prefix="/v1/events", tags=["events"], responses=PROBLEM_RESPONSES, route_class=StrictRoute
)

PING_SECONDS = 15
RECONNECT_MS = 2000  # the `retry` sent with the last event when the daemon stops


_REVOKED = {
    "event": "revoked",
    "data": json.dumps({"reason": "the stream's token was revoked or has expired"}),
}

_SHUTDOWN = {
    "event": "shutdown",
    "data": json.dumps({"reason": "the daemon is stopping"}),
    "retry": RECONNECT_MS,
}


def _queued(queue: asyncio.Queue[Event | None]) -> list[Event]:
    """What the queue holds now (an overflow marker ends it)."""
    events = []
    while not queue.empty():
        event = queue.get_nowait()
        if event is None:
            break
        events.append(event)
    return events


# One event of the stream, as OpenAPI 3.2's itemSchema (schemathesis checks each event
# against it; a `schema` would make SDK generators parse the whole stream as one object).
# `data` is the Event as JSON; the `overflow` event (the client fell too far behind and must
# re-read state) carries `{}`; `reset` and `shutdown` carry what their descriptions say.
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$", "description": "Event.id"},
        "event": {"type": "string", "description": "Event.type, or overflow, reset or shutdown"},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "anyOf": [
                    {"$ref": "#/components/schemas/Event"},
                    {
                        "description": "reset: the events after Last-Event-ID are not all "
                        "available; re-read the state and follow on from `id`",
                        "type": "object",
                        "required": ["type", "id", "requested_id"],
                        "properties": {
                            "type": {"const": "reset"},
                            "id": {"type": "integer"},
                            "requested_id": {"type": "string"},
                        },
                    },
                    {
                        "description": "revoked: the stream's token was revoked or has "
                        "expired (the stream ends; a new token opens a new one)",
                        "type": "object",
                        "required": ["reason"],
                        "properties": {"reason": {"type": "string"}},
                    },
                    {
                        "description": "shutdown: the daemon is stopping; reconnect later",
                        "type": "object",
                        "required": ["reason"],
                        "properties": {"reason": {"type": "string"}},
                    },
                    {"description": "overflow", "type": "object", "maxProperties": 0},
                ]
            },
        },
    },
}


def _sse(event: Event) -> dict[str, Any]:
    return {"id": str(event.id), "event": event.type, "data": json.dumps(event.as_dict())}


def _reset(last_id: int, requested: str) -> dict[str, Any]:
    """Tells a resuming client that events after its id are not all available (older than
    the history kept, from before a daemon restart, or an id never handed out): re-read the
    state, then follow on from this event's id."""
    data = {"type": "reset", "id": last_id, "requested_id": requested}
    return {"id": str(last_id), "event": "reset", "data": json.dumps(data)}


def _resume(bus: EventBus, last_event_id: str | None) -> tuple[list[Event] | None, int]:
    """What a (re)connecting client gets before live events: the events after its
    Last-Event-ID (none without one), or None when it needs a reset; and the id it then
    holds (live events up to it are not sent again)."""
    if last_event_id is None:
        return [], 0
    replay = bus.replay(int(last_event_id) if last_event_id.isdigit() else None)
    if replay is None:
        return None, bus.last_id
    return replay, max([int(last_event_id), *(e.id for e in replay)])


@router.get(
    "",
    operation_id="stream_events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "content": {"text/event-stream": {"itemSchema": SSE_EVENT_SCHEMA}},
            "description": "text/event-stream; each event's data is a JSON object with id, "
            "type, resource, resource_id, name, status, status_reason, generation, "
            "observed_generation, time and data. Event ids increase, also across daemon "
            "restarts. Resume with Last-Event-ID: the events after it are replayed, each "
            "once; when they are not all available (the id is older than the history kept, "
            "from before a restart, or unknown) a `reset` event comes first: re-read the "
            "state, then follow on. `overflow` means this client fell too far behind: "
            "reconnect with Last-Event-ID. When the daemon stops, the stream ends with a "
            '`shutdown` event (data: {"reason": ...}) and an SSE '
            f"`retry` of {RECONNECT_MS} ms.",
        }
    },
)
async def stream_events(
    request: Request,
    resource: Annotated[
        str | None, Query(max_length=32, description="Only events of this resource kind")
    ] = None,
    project: ProjectFilter = None,
    last_event_id: Annotated[str | None, Header(max_length=32)] = None,
) -> EventSourceResponse:
    """A member's or reader's stream carries its project's events only; an admin's every
    project's (and the host's own, which belong to none), or one project's with ?project=."""
    ctx, caller = context(request), caller_of(request)
    scope = await ctx.read(lambda s: list_scope(s, caller, project))

    def wanted(event: Event) -> bool:
        if scope.project_id is not None and event.project_id != scope.project_id:
            return False
        return resource is None or event.resource == resource

    async def revoked() -> bool:
        """The stream's token was revoked or expired since it opened (checked before each
        event it would carry: a revocation takes effect at once, on open streams too)."""
        if caller.principal.token_id is None:  # the unix socket, the admin token file
            return False
        return not await ctx.read(lambda s: still_live(s, caller.principal, ctx.clock()))

    async def stream() -> AsyncIterator[dict[str, Any]]:
        with ctx.bus.subscribe() as queue:
            # subscribed first, so nothing published from here on is missed; whatever the
            # replay already covered is skipped below by id (the queue is in id order)
            async with ctx.drain.watch() as watch:
                replay, sent = _resume(ctx.bus, last_event_id)
                if replay is None:
                    yield _reset(sent, last_event_id or "")
                for event in replay or ():
                    if wanted(event):
                        if await revoked():
                            yield _REVOKED
                            return
                        yield _sse(event)
                while True:
                    queued = await watch.get(queue)
                    if isinstance(queued, Drained):
                        for event in _queued(queue):  # published before the stop: not lost
                            if event.id > sent and wanted(event):
                                yield _sse(event)
                        yield _SHUTDOWN
                        return
                    if queued is None:
                        yield {"event": "overflow", "data": "{}"}
                        return
                    if isinstance(queued, Event) and queued.id > sent and wanted(queued):
                        if await revoked():
                            yield _REVOKED
                            return
                        yield _sse(queued)

    return EventSourceResponse(stream(), ping=PING_SECONDS)
