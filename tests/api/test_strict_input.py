"""What a request carries is read strictly (findings of issue 10's second new-user trial):
query parameters a route does not declare, the bearer scheme's case, JSON that is not
RFC 8259 JSON, and `addresses: null` in a create. Each refusal is a 422 problem+json that
names what to change, and changes nothing (app/api/strict.py)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api.middleware import TcpTransport
from app.api.strict import MAX_DEPTH
from app.main import create_app
from app.settings import Settings
from tests.api.test_vlans_api import make_bridge, problem
from tests.netns_tools import ip, links

JSON = {"content-type": "application/json"}


def _nothing_but(api: TestClient, bridges: set[str]) -> None:
    assert {b["name"] for b in api.get("/v1/bridges").json()["items"]} == bridges
    for kind in ("taps", "vms", "networks", "vlans"):
        assert api.get(f"/v1/{kind}").json()["items"] == [], kind


def test_an_unknown_query_parameter_is_refused_and_changes_nothing(
    api: TestClient, netns: str
) -> None:
    """Unknown body fields are a 422 (README: "no unknown fields"); a misspelt query flag is
    too, or `?dry-run=true` does the real thing: it moved 192.0.2.10/24 off eth0."""
    r = api.post("/v1/bridges?dryrun=true", json={"name": "br0"})
    body = problem(r, 422, "invalid-input")
    assert body["detail"] == "query.dryrun: unknown query parameter; this operation takes: wait"
    assert body["errors"][0]["loc"] == ["query", "dryrun"]
    _nothing_but(api, set())
    assert "br0" not in links(netns)

    make_bridge(api, "br0")
    ip(netns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    ip(netns, "addr", "add", "192.0.2.10/24", "dev", "eth0")
    ip(netns, "link", "set", "eth0", "up")
    ip(netns, "link", "set", "eth0p", "up")
    r = api.put("/v1/bridges/br0/uplink?dry-run=true&wait=5", json={"interface": "eth0"})
    body = problem(r, 422, "invalid-input")
    assert "dry-run" in body["detail"], body
    assert "dry_run" in body["detail"], body  # the spelling it takes
    assert api.get("/v1/bridges/br0/uplink").status_code == 404
    now = links(netns)
    assert now["eth0"].master is None
    assert "192.0.2.10/24" in now["eth0"].addresses
    assert "192.0.2.10/24" not in now["br0"].addresses

    # the declared ones still work, and mean what they did
    r = api.put("/v1/bridges/br0/uplink?dry_run=true", json={"interface": "eth0"})
    assert r.status_code == 200, r.text
    assert "192.0.2.10/24" in links(netns)["eth0"].addresses


def test_every_operation_refuses_an_undeclared_query_parameter(api: TestClient) -> None:
    """One place (StrictRoute), every operation of the OpenAPI document: the check comes
    before the path's object is looked up or the body read, so no operation is left out
    by needing a real object to reach it."""
    operations = [
        (method, path)
        for path, methods in api.app.openapi()["paths"].items()  # type: ignore[attr-defined]
        for method in methods
        # the Neutron API reads its query itself (filters by any attribute; an unknown one
        # is a 400 NeutronError): tests/api/test_neutron_api.py
        if not path.startswith("/networking")
    ]
    assert len(operations) > 40
    for method, template in operations:
        path = re.sub(r"\{[^}]+\}", "x", template)
        r = api.request(method, f"{path}?kvt_typo=1")
        body = problem(r, 422, "invalid-input")
        assert body["errors"][0]["loc"] == ["query", "kvt_typo"], (method, path, body)
    _nothing_but(api, set())


def test_a_query_parameter_given_twice_is_refused(api: TestClient, netns: str) -> None:
    """`?wait=0&wait=10` had FastAPI take the last value; like a JSON member named twice,
    which one wins is the client's guess, so it is refused (a list parameter may repeat)."""
    r = api.post("/v1/bridges?wait=0&wait=10", json={"name": "br0"})
    body = problem(r, 422, "invalid-input")
    assert body["detail"] == "query.wait: given more than once; send it once"
    _nothing_but(api, set())
    assert "br0" not in links(netns)


def test_the_docs_pages_take_any_query(api: TestClient) -> None:
    """Swagger UI's OAuth2 redirect page is opened with the provider's parameters, and the
    pages are no API operations: they keep taking any query."""
    assert api.get("/docs?kvt=1").status_code == 200
    assert api.get("/redoc?kvt=1").status_code == 200
    assert api.get("/openapi.json?kvt=1").status_code == 200
    assert api.get("/docs/oauth2-redirect?code=abc&state=xyz").status_code == 200


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "bEaReR", "Bearer "])
def test_the_bearer_scheme_is_case_insensitive(settings: Settings, netns: str, scheme: str) -> None:
    """RFC 9110 11.1: "It uses a case-insensitive token to identify the authentication
    scheme"; RFC 6750 2.1 defines `Bearer` through that rule; 11.4 allows 1*SP after it."""
    app = create_app(settings, token="s3cret", host_netns=netns)
    with TestClient(TcpTransport(app), base_url="http://kvmnetd") as tcp:
        assert tcp.get("/v1/taps", headers={"Authorization": f"{scheme} wrong"}).status_code == 401
        r = tcp.get("/v1/taps", headers={"Authorization": f"{scheme} s3cret"})
        assert r.status_code == 200, r.text
        for wrong in ("Basic s3cret", "Bearers3cret", "s3cret", "Bearer s3cret2", "Bearer"):
            r = tcp.get("/v1/taps", headers={"Authorization": wrong})
            assert r.status_code == 401, wrong


DEEP = b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        # RFC 8259 section 6: "Numeric values that cannot be represented in the grammar below
        # (such as Infinity and NaN) are not permitted"; the answer talked about the bounds
        (b'{"name": "br0", "forward_delay": NaN}', "NaN is not a JSON number"),
        (b'{"name": "br0", "forward_delay": Infinity}', "Infinity is not a JSON number"),
        (b'{"name": "br0", "forward_delay": -Infinity}', "-Infinity is not a JSON number"),
        # RFC 8259 section 4: names SHOULD be unique, and parsers differ on which one wins;
        # the last one silently did, so a proxy checking the first is bypassed
        (b'{"name": "br0", "name": "br1"}', "member 'name' appears twice in one object"),
        (b'{"name": "br0", "addresses": [{"a": 1, "a": 2}]}', "member 'a' appears twice"),
        # RFC 8259 section 8.1: JSON text is UTF-8; the answer was a bare 400 "There was an
        # error parsing the body", which says nothing of what to change
        (b'{"name": "br\xff"}', "the body is not UTF-8 (byte 0xff at offset 12)"),
        (b'\xef\xbb\xbf{"name": "br0"}', "byte order mark"),
        (b'{"name": "br0", "description": "\\ud800"}', "unpaired UTF-16 surrogate"),
        # nesting: a bounded depth, also far past the parser's own recursion limit
        (b'{"name": "br0", "mac": ' + DEEP + b"}", f"nested deeper than {MAX_DEPTH} levels"),
        (b"[" * 200_000, f"nested deeper than {MAX_DEPTH} levels"),
        # the syntax errors FastAPI already found answer in the same shape, saying where
        (b'{"name": "br0"', "Expecting ',' delimiter at line 1 column 15"),
    ],
    ids=[
        "nan",
        "infinity",
        "-infinity",
        "duplicate",
        "nested-duplicate",
        "not-utf8",
        "bom",
        "lone-surrogate",
        "deep",
        "deeper-than-python",
        "truncated",
    ],
)
def test_a_body_that_is_not_strict_json_is_refused_saying_why(
    api: TestClient, netns: str, body: bytes, why: str
) -> None:
    r = api.post("/v1/bridges", content=body, headers=JSON)
    problem_body = problem(r, 422, "invalid-input")
    assert problem_body["detail"].startswith("body: JSON decode error: "), problem_body
    assert why in problem_body["detail"], problem_body
    assert problem_body["errors"] == [
        {"loc": ["body"], "msg": problem_body["detail"][len("body: ") :], "type": "json_invalid"}
    ]
    _nothing_but(api, set())
    assert not {"br0", "br1"} & links(netns).keys()


def test_strict_json_still_takes_what_json_allows(api: TestClient) -> None:
    """Non-ASCII text, escapes, exponents and nesting up to the limit parse as before."""
    r = api.post(
        "/v1/bridges?wait=10",
        content=b'{"name": "br0", "forward_delay": 1e0, "addresses": ["10.9.0.1/24"]}',
        headers=JSON,
    )
    assert r.status_code == 201, r.text
    assert r.json()["forward_delay"] == 1
    r = api.patch("/v1/bridges/br0", content=b'{"mac": "\\u0030"}', headers=JSON)
    assert "JSON" not in problem(r, 422)["detail"]  # a bad MAC, not bad JSON
    nested: Any = "x"
    for _ in range(MAX_DEPTH - 1):
        nested = [nested]
    r = api.patch("/v1/bridges/br0", json={"mac": nested})
    assert "JSON" not in problem(r, 422)["detail"]
    r = api.patch("/v1/bridges/br0", content='{"mac": "é"}'.encode(), headers=JSON)
    assert "JSON" not in problem(r, 422)["detail"]


def test_null_addresses_mean_none_in_a_create_as_in_a_patch(api: TestClient) -> None:
    """README: `addresses: null` is `[]`; a create accepted null for `mtu`, `mac` and
    `forward_delay` as "left out" but refused it for `addresses`."""
    for kind in ("bridges", "taps"):
        name = f"{kind[:3]}0"
        r = api.post(f"/v1/{kind}?wait=10", json={"name": name, "addresses": None})
        assert r.status_code == 201, r.text
        assert r.json()["addresses"] == []
        r = api.patch(f"/v1/{kind}/{name}", json={"addresses": None})
        assert r.status_code == 200, r.text
        assert r.json()["addresses"] == []
    schemas = api.app.openapi()["components"]["schemas"]  # type: ignore[attr-defined]
    for model in ("BridgeCreate", "TapCreate", "BridgeUpdate", "TapUpdate"):
        addresses = schemas[model]["properties"]["addresses"]
        assert {"type": "null"} in addresses["anyOf"], (model, addresses)
        assert "null" in addresses["description"], (model, addresses)
