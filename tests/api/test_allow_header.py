"""405 answers name every method the path serves (RFC 9110 15.5.6), for every path of the
spec: Starlette's own Allow named only the methods of the first route that matched."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def documented_at(spec: dict[str, Any], path: str) -> list[tuple[int, set[str]]]:
    """(path parameter count, methods) of every documented path that `path` matches."""
    return [
        (template.count("{"), {m.upper() for m in operations})
        for template, operations in spec["paths"].items()
        if re.fullmatch(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)), path)
    ]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    state = tmp_path_factory.mktemp("allow")
    # no lifespan (no `with`): routing alone answers 405, nothing touches a database or host
    return TestClient(create_app(Settings(state_dir=state, listen=""), token="x"))


def test_every_405_lists_every_method_of_its_path(client: TestClient) -> None:
    spec = client.app.openapi()  # type: ignore[attr-defined]
    checked = 0
    for template in spec["paths"]:
        path = re.sub(r"\{[^}]+\}", "0", template)
        matching = documented_at(spec, path)
        # the resource is the most literal path (at /v1/port-forwards/batch: .../batch)
        expected = sorted(min(matching, key=lambda item: item[0])[1])
        served = set().union(*(methods for _, methods in matching))  # GET .../{forward_id}
        for method in sorted(set(METHODS) - served):
            response = client.request(method, path)
            assert response.status_code == 405, (method, path, response.text)
            # the Neutron API answers NeutronError bodies (app.api.neutron.errors)
            neutron = path.startswith("/networking")
            media = "application/json" if neutron else "application/problem+json"
            assert response.headers["content-type"] == media
            allow = sorted(m.strip() for m in response.headers["allow"].split(","))
            assert allow == expected, (method, path)
            checked += 1
    assert checked > 50  # every path, not a few


def test_405_on_a_path_with_one_route(client: TestClient) -> None:
    response = client.post("/healthz")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"
