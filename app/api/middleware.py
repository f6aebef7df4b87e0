"""Pure ASGI middleware: request ids, body size limit, who a request acts as (tokens)."""

from __future__ import annotations

import hmac
import re
import uuid
from collections.abc import Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.neutron.errors import error_bytes, under_prefix
from app.api.problems import PROBLEM_MEDIA_TYPE, problem_bytes
from app.domain.tenancy import ADMIN_BY_SOCKET, ADMIN_BY_TOKEN_FILE, Principal

_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
# health, and the API's description: the spec and the docs pages hold no secrets, and a
# browser cannot send a bearer token for a page it opens
OPEN_PATHS = frozenset(
    {"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
)
DOCS_ASSETS = "/docs/static"  # Swagger UI's and ReDoc's files, served by the daemon


def _is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(DOCS_ASSETS + "/")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def _send_problem(
    send: Send, status: int, scope: Scope, extra_headers: list[Any] | None = None, **fields: Any
) -> None:
    media_type = PROBLEM_MEDIA_TYPE
    if under_prefix(scope.get("path", "")):  # the Neutron API: NeutronError bodies
        body, media_type = error_bytes(status, str(fields.get("detail", ""))), "application/json"
    else:
        body = problem_bytes(
            status,
            request_id=scope.get("state", {}).get("request_id"),
            instance=scope.get("path"),
            **fields,
        )
    headers = [
        (b"content-type", media_type.encode()),
        (b"content-length", str(len(body)).encode()),
        *(extra_headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestIdMiddleware:
    """Accepts a well-formed X-Request-Id from the client, else makes one; echoes it as
    X-Request-Id and X-OpenStack-Request-Id on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        request_id = given if given and _REQUEST_ID_RE.fullmatch(given) else f"req-{uuid.uuid4()}"
        scope.setdefault("state", {})["request_id"] = request_id
        raw = request_id.encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"x-request-id", raw), (b"x-openstack-request-id", raw)]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)


class JsonContentTypeMiddleware:
    """Bodies of POST/PATCH/PUT must be JSON; anything else (curl -d without -H) gets a 415
    that says what to send, instead of a confusing validation error."""

    METHODS = frozenset({"POST", "PATCH", "PUT"})

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in self.METHODS:
            content_type = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
            length = _header(scope, b"content-length")
            has_body = length not in (None, "0") or _header(scope, b"transfer-encoding")
            if has_body and content_type != "application/json":
                await _send_problem(
                    send,
                    415,
                    scope,
                    detail=f"send the body as JSON with 'Content-Type: application/json' "
                    f"(got {content_type or 'no content type'!r})",
                )
                return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuses bodies over `limit` bytes with 413, by Content-Length or while streaming
    (a chunked body): then an HTTPException(413) that the framework hands to the problem
    handler, where any other exception raised while reading would become a 400."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        detail = f"request bodies are limited to {self.limit} bytes"
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await _send_problem(send, 413, scope=scope, detail=detail)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise HTTPException(status_code=413, detail=detail)
            return message

        await self.app(scope, counting_receive, send)


class TcpTransport:
    """Wraps the app for the TCP listener; marks its requests as needing a bearer token.
    The unix socket is served unwrapped: its file mode is its guard."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope.setdefault("state", {})["via_tcp"] = True
        await self.app(scope, receive, send)


def bearer_token(authorization: str | None) -> bytes:
    """The token of an `Authorization: Bearer <token>` header, else b"". The scheme is a
    case-insensitive token (RFC 9110 section 11.1: `bearer` and `BEARER` are `Bearer`),
    followed by one or more spaces (RFC 9110 section 11.4: `auth-scheme [ 1*SP token68 ]`)."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return b""
    # RFC 9110 section 5.5: a field value has no leading or trailing whitespace
    return token.strip(" \t").encode("latin-1")


def _headers(scope: Scope, name: bytes) -> list[str]:
    return [v.decode("latin-1") for k, v in scope.get("headers", ()) if k == name]


class ConflictingTokens(Exception):
    """The request presents more than one token (RFC 9110 section 5.3: Authorization is a
    singleton field; X-Auth-Token must agree with it): which one it acts as is ambiguous."""


def presented_token(scope: Scope) -> bytes:
    """The token a request carries: `Authorization: Bearer <token>` and/or OpenStack's
    `X-Auth-Token: <token>` (what openstacksdk and the `openstack` CLI send); b"" if none.
    ConflictingTokens when they name different tokens (or either is repeated with another)."""
    given = {bearer_token(value) for value in _headers(scope, b"authorization")}
    given |= {v.strip(" \t").encode("latin-1") for v in _headers(scope, b"x-auth-token")}
    given.discard(b"")
    if len(given) > 1:
        raise ConflictingTokens
    return given.pop() if given else b""


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # RFC 9110 section 9.2.1


class AuthMiddleware:
    """Decides who each request acts as (scope state `principal`, app.domain.tenancy):
    - over TCP every path but health and the API's description (OPEN_PATHS, DOCS_ASSETS)
      needs a token: the first-start admin token, or a live project token (`authenticate`);
    - the unix socket needs none (its file mode is its guard: admin), but a token sent
      over it is honoured, so an admin can act as a project's token there;
    - a `reader` token may only use safe methods (403 otherwise)."""

    def __init__(
        self, app: ASGIApp, token: str, authenticate: Callable[[bytes], Principal | None]
    ) -> None:
        self.app = app
        self.expected = token.encode()
        self.authenticate = authenticate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        try:
            principal = self._principal(scope, state.get("via_tcp", False))
        except ConflictingTokens:
            await _send_problem(
                send,
                401,
                scope,
                extra_headers=[(b"www-authenticate", b'Bearer realm="kvmnetd"')],
                detail="the request presents more than one token (two Authorization fields, "
                "or X-Auth-Token and Authorization naming different tokens): send one",
            )
            return
        if principal is None:
            sent = "this token is unknown, revoked or expired; " if presented_token(scope) else ""
            await _send_problem(
                send,
                401,
                scope,
                extra_headers=[(b"www-authenticate", b'Bearer realm="kvmnetd"')],
                detail=f"{sent}send Authorization: Bearer <token> (or X-Auth-Token: <token>): "
                "the admin token is in the daemon's token file; project tokens come from "
                "POST /v1/projects/{id}/tokens",
            )
            return
        if not principal.may_write and scope["method"] not in SAFE_METHODS:
            await _send_problem(
                send,
                403,
                scope,
                detail=f"this token's role is {principal.role.value!r}: it may only read "
                "(GET); changes need a member or admin token",
            )
            return
        state["principal"] = principal
        await self.app(scope, receive, send)

    def _principal(self, scope: Scope, via_tcp: bool) -> Principal | None:
        given = presented_token(scope)
        if not given:
            return None if via_tcp else ADMIN_BY_SOCKET
        if hmac.compare_digest(given, self.expected):
            return ADMIN_BY_TOKEN_FILE
        return self.authenticate(given)
