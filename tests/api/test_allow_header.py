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


def served_at(spec: dict[str, Any], path: str) -> set[str]:
    """Methods of every template that matches `path` (at /v1/port-forwards/batch, GET is
    that of /v1/port-forwards/{forward_id})."""
    methods: set[str] = set()
    for template, operations in spec["paths"].items():
        if re.fullmatch(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)), path):
            methods |= {m.upper() for m in operations}
    return methods


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
        expected = sorted(served_at(spec, path))  # its own operations and those below
        for method in sorted(set(METHODS) - set(expected)):
            response = client.request(method, path)
            assert response.status_code == 405, (method, path, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            allow = sorted(m.strip() for m in response.headers["allow"].split(","))
            assert allow == expected, (method, path)
            checked += 1
    assert checked > 50  # every path, not a few


def test_405_on_a_path_with_one_route(client: TestClient) -> None:
    response = client.post("/healthz")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"
