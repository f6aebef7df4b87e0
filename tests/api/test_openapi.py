"""The committed OpenAPI document must equal what the app serves (regenerate: make openapi)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.main import create_app
from app.settings import Settings

SPEC = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"


def test_committed_openapi_matches_app(tmp_path: Path) -> None:
    served = create_app(Settings(state_dir=tmp_path, listen=""), token="x").openapi()
    committed = json.loads(SPEC.read_text())
    assert served == committed, "openapi/openapi.json is stale: run `make openapi` and commit"


def test_every_operation_has_an_id_tag_and_error_schema() -> None:
    spec = json.loads(SPEC.read_text())
    seen = set()
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            assert op.get("operationId"), f"{method} {path} has no operationId"
            assert op["operationId"] not in seen
            seen.add(op["operationId"])
            assert len(op.get("tags", [])) == 1, f"{method} {path} needs exactly one tag"
            if path.startswith("/v1/") and op["operationId"] != "stream_events":
                assert "422" in op["responses"] or method == "get", f"{method} {path}"


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    return spec["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else schema


def test_every_link_names_a_real_operation_and_its_inputs() -> None:
    """Each create links to the operations on what it made (path id) and to the creates that
    name it in their body (a tap or network on a new bridge); every link names an existing
    operation, path parameter or body field (clients and the stateful fuzzer follow them)."""
    spec = json.loads(SPEC.read_text())
    operations = {
        op["operationId"]: op for methods in spec["paths"].values() for op in methods.values()
    }
    body_links = set()
    for op in operations.values():
        for response in op["responses"].values():
            for name, link in response.get("links", {}).items():
                target = operations[link["operationId"]]
                assert name == link["operationId"]
                params = {p["name"] for p in target.get("parameters", []) if p["in"] == "path"}
                assert set(link.get("parameters", {})) <= params, name
                if "requestBody" in link:
                    content = target["requestBody"]["content"]["application/json"]
                    fields = _resolve(spec, content["schema"])["properties"]
                    assert set(link["requestBody"]) <= set(fields), name
                    body_links.add((op["operationId"], name))
    assert {("create_bridge", "create_tap"), ("create_bridge", "create_network")} <= body_links
