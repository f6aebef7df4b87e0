"""Maps every exception to problem+json: DomainError kinds, validation errors, HTTP errors,
and anything unexpected (500, logged with the request id)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

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


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def domain_error(request: Request, exc: DomainError) -> Response:
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
        return problem_response(
            exc.status_code,
            detail=str(exc.detail),
            request_id=_request_id(request),
            instance=request.url.path,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(IntegrityError)
    async def integrity_error(request: Request, exc: IntegrityError) -> Response:
        log.warning("constraint violated on %s %s: %s", request.method, request.url.path, exc)
        return problem_response(
            409,
            detail="the change conflicts with the current state (a unique name or a reference)",
            request_id=_request_id(request),
            instance=request.url.path,
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            500,
            detail="an unexpected error occurred; the daemon log has details under this request id",
            request_id=_request_id(request),
            instance=request.url.path,
        )
