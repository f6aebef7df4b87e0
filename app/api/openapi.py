"""The OpenAPI document as SDK generators need it.

FastAPI describes error bodies under application/json and validation errors with its own
HTTPValidationError; the daemon answers every error as application/problem+json with the
Problem schema. This rewrites the generated document to say exactly that, adds a default
Problem response, the bearer scheme of the TCP listener, the mutation headers and the
Event schema of the SSE stream.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.schemas.events import EventOut

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
PROBLEM_CONTENT = {"application/problem+json": {"schema": PROBLEM_REF}}
MUTATION_HEADERS = {
    "Location": {"description": "The resource", "schema": {"type": "string"}},
    "Operation-Location": {
        "description": "The operation that tracks this change",
        "schema": {"type": "string"},
    },
}


def _is_error(code: str) -> bool:
    return code == "default" or code.startswith(("4", "5"))


def _fix_operation(method: str, operation: dict[str, Any]) -> None:
    responses = operation.setdefault("responses", {})
    responses.setdefault("default", {"description": "An error (problem details)"})
    for code, response in responses.items():
        if _is_error(code):
            response["content"] = PROBLEM_CONTENT
        elif method in ("post", "patch", "delete") and code in ("201", "202"):
            response["headers"] = MUTATION_HEADERS


_PARAM = re.compile(r"\{([^}]+)\}")
# sub-resources a create does not make (a bridge's uplink exists once PUT attaches one)
CREATED_APART = ("/uplink",)


def _add_links(paths: dict[str, Any]) -> None:
    """OpenAPI links from each create (POST on a collection) to every operation on what it
    created (`/collection/{id}` and below, when that id is their only path parameter), fed
    with the `id` of the answer: clients and stateful fuzzers follow them."""
    for collection, methods in paths.items():
        create = methods.get("post")
        if create is None or _PARAM.search(collection):
            continue
        links: dict[str, Any] = {}
        for path, operations in paths.items():
            names = _PARAM.findall(path)
            if len(names) != 1 or not path.startswith(f"{collection}/{{{names[0]}}}"):
                continue
            if path.endswith(CREATED_APART):
                continue
            for operation in operations.values():
                links[operation["operationId"]] = {
                    "operationId": operation["operationId"],
                    "parameters": {names[0]: "$response.body#/id"},
                }
        for code in ("201", "202"):
            if links and code in create["responses"]:
                create["responses"][code]["links"] = links
    _add_body_links(paths)


# creates whose body names what another create made: (source, target, body field)
BODY_LINKS = (
    ("create_bridge", "create_tap", "bridge"),
    ("create_bridge", "create_network", "bridge"),
    ("create_bridge", "create_vlan", "trunk"),
)


def _add_body_links(paths: dict[str, Any]) -> None:
    """OpenAPI links from a create to the creates that refer to what it made in their body
    (a tap or network on the new bridge), fed with the answer's `id`."""
    operations = {
        operation["operationId"]: operation
        for methods in paths.values()
        for operation in methods.values()
    }
    for source, target, field in BODY_LINKS:
        for code in ("201", "202"):
            response = operations[source]["responses"].get(code)
            if response is not None:
                response.setdefault("links", {})[target] = {
                    "operationId": target,
                    "requestBody": {field: "$response.body#/id"},
                }


def build_openapi(app: FastAPI) -> dict[str, Any]:
    spec = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
        tags=app.openapi_tags,
    )
    for methods in spec["paths"].values():
        for method, operation in methods.items():
            _fix_operation(method, operation)
    _add_links(spec["paths"])
    schemas = spec["components"]["schemas"]
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas["Event"] = EventOut.model_json_schema(ref_template="#/components/schemas/{model}")
    spec["components"]["securitySchemes"] = {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "Needed on the TCP listener; the unix socket needs none",
        }
    }
    spec["security"] = [{}, {"bearer": []}]
    return spec


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
