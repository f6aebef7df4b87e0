"""NeutronError bodies for everything under the Neutron prefix (issue 12).

Neutron answers errors as `{"NeutronError": {"type": <exception class>, "message": ...,
"detail": ""}}` (neutron/api/v2/base.py, neutron-lib's exception classes) with its own
status codes: 400 for bad input (never 422), 401, 403, 404 (an unknown id, and an unknown
path), 405, 409 (conflicts, InUse, OverQuota), 412 (If-Match). app.api.errors and the auth
middleware call here for any request whose path lies under PREFIX, so the shape holds for
the framework's own errors too (validation, unknown path, method, token).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse

from app.domain.errors import DomainError
from app.domain.neutron import NeutronError, neutron_resource

PREFIX = "/networking"
__all__ = ["PREFIX", "NeutronError", "error_body", "error_response", "under_prefix"]

# our problem kinds -> the Neutron exception class name a client sees as `type`
KIND_TYPES = {
    "not-found": "NotFound",
    "invalid-input": "InvalidInput",
    "forbidden": "PolicyNotAuthorized",
    "in-use": "InUse",
    "over-quota": "OverQuota",
    "name-taken": "Conflict",
    "conflict": "Conflict",
    "address-taken": "IpAddressAlreadyAllocated",
    "addresses-exhausted": "IpAddressGenerationFailure",
    "mac-taken": "MacAddressInUse",
    "being-deleted": "Conflict",
    "host-lacks-feature": "InvalidInput",
    "revision-number-constraint-failed": "RevisionNumberConstraintFailed",
    "vlan-id-outside-ranges": "PolicyNotAuthorized",
    "vlan-ranges-exhausted": "NoNetworkAvailable",
}
STATUS_TYPES = {
    400: "HTTPBadRequest",
    401: "HTTPUnauthorized",
    403: "PolicyNotAuthorized",  # Neutron's policy engine refuses every forbidden call
    404: "HTTPNotFound",
    405: "HTTPMethodNotAllowed",
    409: "Conflict",
    412: "HTTPPreconditionFailed",
    413: "HTTPRequestEntityTooLarge",
    415: "HTTPUnsupportedMediaType",
    500: "HTTPInternalServerError",
    503: "HTTPServiceUnavailable",
}


def under_prefix(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def neutron_status(status: int) -> int:
    """Neutron answers bad input with 400, never 422."""
    return 400 if status == 422 else status


def error_body(status: int, message: str, neutron_type: str | None = None) -> dict[str, Any]:
    return {
        "NeutronError": {
            "type": neutron_type or STATUS_TYPES.get(status, "NeutronException"),
            "message": message,
            "detail": "",
        }
    }


def validation_message(errors: list[dict[str, Any]]) -> str:
    """A request's validation errors in Neutron's words (neutron/api/v2/base.py
    _validate_body: "Unrecognized attribute(s) 'x, y'"; an attribute's value:
    "Invalid input for <attribute>. Reason: <why>."). An attribute is named from the body's
    envelope down (`fixed_ips.0.ip_address`), or is the query parameter's name."""
    unknown = [_attribute(e["loc"]) for e in errors if e.get("type") == "extra_forbidden"]
    if unknown:
        return f"Unrecognized attribute(s) '{', '.join(unknown)}'"
    if not errors:
        return "Invalid input"
    first = errors[0]
    attribute, reason = _attribute(first["loc"]), str(first["msg"]).removeprefix("Value error, ")
    return f"Invalid input for {attribute}. Reason: {reason}." if attribute else reason


def _attribute(loc: list[Any]) -> str:
    """`body.network.mtu` -> `mtu` (the envelope dropped); `query.limit` -> `limit`."""
    parts = [str(p) for p in loc]
    if parts[:1] == ["body"]:
        parts = parts[2:] if len(parts) > 2 else parts[1:]
    elif parts[:1] in (["query"], ["path"], ["header"]):
        parts = parts[1:]
    return ".".join(parts)


def error_bytes(status: int, message: str, neutron_type: str | None = None) -> bytes:
    return json.dumps(error_body(status, message, neutron_type)).encode()


def domain_error_response(exc: DomainError) -> JSONResponse:
    status = neutron_status(exc.status)
    neutron_type = getattr(exc, "neutron_type", None) or KIND_TYPES.get(exc.kind)
    return error_response(status, neutron_message(exc), neutron_type)


def neutron_message(exc: DomainError) -> str:
    """The message a Neutron client sees: Neutron's own wording where clients or people
    match on it (OverQuota: "Quota exceeded for resources: ['network']." with Neutron's
    resource name, our detail after it), else ours."""
    quota = exc.extra.get("quota")
    if exc.kind == "over-quota" and isinstance(quota, str):
        return f"Quota exceeded for resources: ['{neutron_resource(quota)}']. {exc.detail}"
    return exc.detail


def error_response(
    status: int,
    message: str,
    neutron_type: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    status = neutron_status(status)
    return JSONResponse(error_body(status, message, neutron_type), status, headers=headers)
