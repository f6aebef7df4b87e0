"""/v1/events: every state change as server-sent events (`curl -N` follows it)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from sse_starlette.sse import EventSourceResponse

from app.api.deps import context
from app.bus import Event
from app.schemas.common import PROBLEM_RESPONSES

router = APIRouter(prefix="/v1/events", tags=["events"], responses=PROBLEM_RESPONSES)

PING_SECONDS = 15
# One event of the stream, as OpenAPI 3.2's itemSchema (schemathesis checks each event
# against it; a `schema` would make SDK generators parse the whole stream as one object).
# `data` is the Event as JSON; the `overflow` event (the client fell too far behind and must
# re-read state) carries `{}`.
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$", "description": "Event.id"},
        "event": {"type": "string", "description": "Event.type, or overflow"},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"$ref": "#/components/schemas/Event"},
        },
    },
}


def _sse(event: Event) -> dict[str, Any]:
    return {"id": str(event.id), "event": event.type, "data": json.dumps(event.as_dict())}


@router.get(
    "",
    operation_id="stream_events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "content": {"text/event-stream": {"itemSchema": SSE_EVENT_SCHEMA}},
            "description": "text/event-stream; each event's data is a JSON object with id, "
            "type, resource, resource_id, name, status, status_reason, generation, "
            "observed_generation, time. Resume with Last-Event-ID.",
        }
    },
)
async def stream_events(
    request: Request,
    resource: Annotated[
        str | None, Query(max_length=32, description="Only events of this resource kind")
    ] = None,
    last_event_id: Annotated[str | None, Header(max_length=32)] = None,
) -> EventSourceResponse:
    ctx = context(request)

    def wanted(event: Event) -> bool:
        return resource is None or event.resource == resource

    async def stream() -> AsyncIterator[dict[str, Any]]:
        with ctx.bus.subscribe() as queue:
            if last_event_id and last_event_id.isdigit():
                for event in ctx.bus.since(int(last_event_id)):
                    if wanted(event):
                        yield _sse(event)
            while True:
                queued = await queue.get()
                if queued is None:
                    yield {"event": "overflow", "data": "{}"}
                    return
                if wanted(queued):
                    yield _sse(queued)

    return EventSourceResponse(stream(), ping=PING_SECONDS)
