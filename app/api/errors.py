"""Maps every exception to problem+json: DomainError kinds, validation errors, HTTP errors,
and anything unexpected (500, logged with the request id)."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from app.api.neutron import errors as neutron
from app.api.problems import problem_response
from app.domain.errors import DomainError

log = logging.getLogger(__name__)


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def _clean_errors(errors: Any) -> list[dict[str, Any]]:
    """Validation errors without echoing the (possibly huge or hostile) input back."""
    return [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
        for e in errors
    ]


HTTP_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def _template_regex(template: str) -> str:
    return re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))


def allowed_methods(request: Request) -> list[str]:
    """The methods of the resource at the request's path, for Allow (RFC 9110 15.5.6).

    Starlette would name only the methods of the first route that matched, but a path has
    one route per method here (GET and POST /v1/bridges are two routes). The resource is
    the documented path the URL matches, the most literal one first (/v1/port-forwards/batch
    before /v1/port-forwards/{forward_id}), as clients of the OpenAPI document see it; paths
    outside the document ask every route the router's own question (`matches`)."""
    path = request.url.path
    documented = [
        (template.count("{"), operations)
        for template, operations in request.app.openapi()["paths"].items()
        if re.fullmatch(_template_regex(template), path)
    ]
    if documented:
        _, operations = min(documented, key=lambda item: item[0])
        return sorted(method.upper() for method in operations)
    routes = request.app.router.routes
    return [
        method
        for method in HTTP_METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    ]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def domain_error(request: Request, exc: DomainError) -> Response:
        if neutron.under_prefix(request.url.path):
            return neutron.domain_error_response(exc)
        return problem_response(
            exc.status,
            kind=exc.kind,
            title=exc.title,
            detail=exc.detail,
            request_id=_request_id(request),
            instance=request.url.path,
            extra=exc.extra,
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        errors = _clean_errors(exc.errors())
        if neutron.under_prefix(request.url.path):
            return neutron.error_response(400, neutron.validation_message(errors))
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        return problem_response(
            422,
            detail=f"{where}: {first['msg']}" if where else first["msg"],
            request_id=_request_id(request),
            instance=request.url.path,
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request))
        if neutron.under_prefix(request.url.path):
            detail = "The resource could not be found." if exc.status_code == 404 else exc.detail
            return neutron.error_response(exc.status_code, str(detail), headers=headers or None)
        return problem_response(
            exc.status_code,
            detail=str(exc.detail),
            request_id=_request_id(request),
            instance=request.url.path,
            headers=headers or None,
        )

    @app.exception_handler(IntegrityError)
    async def integrity_error(request: Request, exc: IntegrityError) -> Response:
        log.warning("constraint violated on %s %s: %s", request.method, request.url.path, exc)
        if neutron.under_prefix(request.url.path):
            return neutron.error_response(409, "the change conflicts with the current state")
        return problem_response(
            409,
            detail="the change conflicts with the current state (a unique name or a reference)",
            request_id=_request_id(request),
            instance=request.url.path,
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        if neutron.under_prefix(request.url.path):
            return neutron.error_response(500, "Request Failed: internal server error")
        return problem_response(
            500,
            detail="an unexpected error occurred; the daemon log has details under this request id",
            request_id=_request_id(request),
            instance=request.url.path,
        )
