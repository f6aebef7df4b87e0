"""The committed OpenAPI document must equal what the app serves (regenerate: make openapi)."""

from __future__ import annotations

import json
from pathlib import Path

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
