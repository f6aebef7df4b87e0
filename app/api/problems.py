"""RFC 9457 problem+json: one builder for every error the HTTP layer returns."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse

PROBLEM_TYPE_PREFIX = "urn:kvmnetd:problem:"
PROBLEM_MEDIA_TYPE = "application/problem+json"

KIND_BY_STATUS = {
    400: ("bad-request", "Bad request"),
    401: ("unauthorized", "Authentication required"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Resource not found"),
    405: ("method-not-allowed", "Method not allowed"),
    409: ("conflict", "Conflict with the current state"),
    413: ("body-too-large", "Request body too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    422: ("invalid-input", "Invalid input"),
    500: ("internal-error", "Internal server error"),
    503: ("unavailable", "Service unavailable"),
}


def problem_body(
    status: int,
    detail: str | None = None,
    kind: str | None = None,
    title: str | None = None,
    request_id: str | None = None,
    instance: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    default_kind, default_title = KIND_BY_STATUS.get(status, ("error", "Error"))
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_PREFIX + (kind or default_kind),
        "title": title or default_title,
        "status": status,
        "detail": detail,
        "instance": instance,
        "request_id": request_id,
    }
    if errors is not None:
        body["errors"] = errors
    body.update({k: v for k, v in (extra or {}).items() if v is not None and k not in body})
    return body


def problem_response(
    status: int, headers: dict[str, str] | None = None, **fields: Any
) -> JSONResponse:
    return JSONResponse(
        problem_body(status, **fields),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


def problem_bytes(status: int, **fields: Any) -> bytes:
    return json.dumps(problem_body(status, **fields)).encode()
