"""What a request carries besides its validated fields, read strictly: the names in the
query string and the JSON text of the body. Every route of the API is a `StrictRoute`.

Query strings: a route takes the query parameters it declares and no others, each at most
once unless it is a list. FastAPI ignores the rest, so a typo (`?dry-run=true` for
`?dry_run=true`) did the real thing instead of the plan; now it is a 422 naming the
parameter and the ones the route takes, before anything runs. The OpenAPI document is
unchanged: it already lists each route's parameters.

Bodies: JSON as RFC 8259 defines it, decided before FastAPI reads the body (FastAPI's
documented "custom Request and APIRoute class" mechanism: the route hands FastAPI a
`StrictJsonRequest` whose `json()` is the strict parse, so the body is parsed once):
- UTF-8 only (RFC 8259 section 8.1), no byte order mark;
- no `NaN`, `Infinity` or `-Infinity` (not in the grammar, RFC 8259 section 6);
- each member name at most once per object (RFC 8259 section 4: parsers differ on which of
  two wins; the last one silently did);
- at most MAX_DEPTH nested arrays and objects;
- no unpaired UTF-16 surrogate escape in a string (`"\\ud800"`: RFC 8259 section 8.2 leaves
  its meaning unpredictable, and it cannot be stored as UTF-8).
Each failure, a syntax error (a truncated body) too, is a 422 problem+json of one shape:
error type `json_invalid` at `body`, its message FastAPI's "JSON decode error" followed by
exactly why (and where, for a syntax error).
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel

MAX_DEPTH = 32  # nested arrays/objects; the deepest request body (a VM's NICs) needs 4
JSON_ERROR = "JSON decode error"  # FastAPI's message for a body that does not parse
_REPEATABLE = (list, tuple, set, frozenset)


class InvalidJson(ValueError):
    """The body is not JSON as RFC 8259 defines it; the message says why."""


def _refuse_constant(literal: str) -> Any:
    raise InvalidJson(f"{literal} is not a JSON number (RFC 8259 section 6); send a number")


def _object_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) == len(pairs):
        return members
    seen: set[str] = set()
    for name, _ in pairs:
        if name in seen:
            raise InvalidJson(
                f"member {name!r} appears twice in one object; send each member once "
                "(RFC 8259 section 4)"
            )
        seen.add(name)
    raise AssertionError("unreachable: fewer members than pairs means a repeat")


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, object_pairs_hook=_object_once)


def _text(body: bytes) -> str:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJson(
            f"the body is not UTF-8 (byte 0x{body[exc.start]:02x} at offset {exc.start}); "
            "JSON text is UTF-8 (RFC 8259 section 8.1)"
        ) from None
    if text.startswith("\ufeff"):
        raise InvalidJson("the body starts with a byte order mark (RFC 8259 section 8.1)")
    return text


def _check_strings(values: Iterable[Any]) -> None:
    for value in values:
        # isascii() is O(1) in CPython: only non-ASCII strings are encoded
        if isinstance(value, str) and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidJson(
                    "a string holds an unpaired UTF-16 surrogate escape (RFC 8259 section 8.2)"
                ) from None


def _check_shape(document: Any) -> None:
    """At most MAX_DEPTH levels of arrays and objects; strings that are Unicode text."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            _check_strings(value.keys())
            children: Iterable[Any] = value.values()
        elif isinstance(value, list):
            children = value
        else:
            _check_strings((value,))
            continue
        if depth > MAX_DEPTH:
            raise InvalidJson(f"arrays and objects are nested deeper than {MAX_DEPTH} levels")
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
            else:
                _check_strings((child,))


def loads(body: bytes) -> Any:
    """The JSON value of `body`, or InvalidJson saying why it is none."""
    text = _text(body)
    try:
        document = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise InvalidJson(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise InvalidJson(f"arrays and objects are nested deeper than {MAX_DEPTH} levels") from None
    _check_shape(document)
    return document


class StrictJsonRequest(Request):
    """A request whose `json()` is `loads` (FastAPI calls it for JSON bodies)."""

    async def json(self) -> Any:
        if not hasattr(self, "_strict_json"):
            self._strict_json = loads(await self.body())
        return self._strict_json


def invalid_json(reason: str) -> RequestValidationError:
    return RequestValidationError(
        [{"type": "json_invalid", "loc": ("body",), "msg": f"{JSON_ERROR}: {reason}", "input": {}}]
    )


def _is_repeatable(annotation: Any) -> bool:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_is_repeatable(arm) for arm in typing.get_args(annotation))
    return (typing.get_origin(annotation) or annotation) in _REPEATABLE


def declared_query(dependant: Dependant) -> dict[str, bool]:
    """The query parameters a route declares (its own and its dependencies'), each with
    whether it may repeat (a list); a pydantic model as the parameters stands for its fields."""
    declared: dict[str, bool] = {}
    pending = [dependant]
    while pending:
        current = pending.pop()
        pending.extend(current.dependencies)
        for field in current.query_params:
            model = field.field_info.annotation
            if isinstance(model, type) and issubclass(model, BaseModel):
                for name, info in model.model_fields.items():
                    declared[info.alias or name] = _is_repeatable(info.annotation)
            else:
                declared[field.alias] = _is_repeatable(field.field_info.annotation)
    return declared


def query_problems(request: Request, declared: dict[str, bool]) -> list[dict[str, Any]]:
    """One validation error per query parameter the route does not take or that came more
    than once where one value is all it takes (FastAPI would use the last)."""
    takes = ", ".join(sorted(declared)) or "none"
    errors: list[dict[str, Any]] = []
    params = request.query_params
    for name in dict.fromkeys(params.keys()):
        if name not in declared:
            kind, msg = "query_unknown", f"unknown query parameter; this operation takes: {takes}"
        elif not declared[name] and len(params.getlist(name)) > 1:
            kind, msg = "query_repeated", "given more than once; send it once"
        else:
            continue
        errors.append({"type": kind, "loc": ("query", name), "msg": msg, "input": name})
    return errors


class StrictRoute(APIRoute):
    """An APIRoute that refuses query parameters it does not declare and bodies that are not
    strict JSON (module docstring), before FastAPI validates anything. `strict_query`
    False: any query parameter passes (the Neutron API's lists filter by any attribute
    and read the query themselves: app.api.neutron.query)."""

    strict_query = True

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        declared = declared_query(self.dependant)
        has_body = self.body_field is not None

        async def strict_handler(request: Request) -> Response:
            if has_body:  # first: the query string parsed below is the one FastAPI reads
                request = StrictJsonRequest(request.scope, request.receive)
            if (
                self.strict_query
                and request.scope["query_string"]
                and (errors := query_problems(request, declared))
            ):
                raise RequestValidationError(errors)
            if has_body and await request.body():  # an empty body is FastAPI's "missing"
                try:
                    await request.json()
                except InvalidJson as exc:
                    raise invalid_json(str(exc)) from None
            return await handler(request)

        return strict_handler
