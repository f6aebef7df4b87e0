"""Bad input against the real daemon: every request in the batch gets a 4xx problem+json
(type, title, status, detail, request_id) and nothing changes, neither in the kernel nor in
what GET /v1/bridges and /v1/taps report."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import (
    E2EDaemon,
    assert_problem,
    kernel_snapshot,
    list_all,
    ok,
    running_daemon,
)
from tests.netns_tools import nft_rules, throwaway_netns

pytestmark = pytest.mark.e2e

JSON = {"content-type": "application/json"}
TWO_MIB = 2 << 20


@dataclass(frozen=True)
class Case:
    """One bad request and the problem it must get."""

    id: str
    method: str
    path: str
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 422
    kind: str = "invalid-input"
    detail_has: str | None = None

    def send(self, client: httpx.Client) -> httpx.Response:
        if self.content is not None:
            return client.request(
                self.method, self.path, content=self.content, headers=self.headers
            )
        return client.request(self.method, self.path, json=self.json, headers=self.headers)


def invalid(id_: str, method: str, path: str, body: Any, detail_has: str | None = None) -> Case:
    return Case(id_, method, path, json=body, detail_has=detail_has)


BAD_NAMES = [
    ("16-chars", "abcdefghijklmnop", "15"),
    ("shell", "a;rm -rf /", None),
    ("traversal", "../x", None),
    ("space", "tap 1", None),
    ("umlaut", "täp", None),
    ("empty", "", None),
    ("dot", ".", None),
    ("dotdot", "..", None),
    ("newline", "tap1\n", None),
    ("slash", "a/b", None),
    ("colon", "br:0", None),
    ("subst", "$(reboot)", None),
    ("template", "br%d", None),
]
BAD_MACS = [
    ("multicast", "01:00:5e:00:00:01"),
    ("zero", "00:00:00:00:00:00"),
    ("broadcast", "ff:ff:ff:ff:ff:ff"),
    ("not-hex", "zz:zz:zz:zz:zz:zz"),
    ("short", "52:54:00:12:34"),
    ("long", "52:54:00:12:34:56:78"),
]
BAD_CIDRS = [
    ("octet-300", "300.1.1.1/24"),
    ("network-address", "192.168.1.0/24"),
    ("broadcast-address", "192.168.1.255/24"),
    ("no-prefix", "192.168.1.1"),
    ("prefix-33", "10.0.0.1/33"),
    ("link-local-v6", "fe80::1/64"),
    ("multicast", "224.0.0.1/24"),
    ("loopback", "127.0.0.2/8"),
    ("unspecified", "0.0.0.0/8"),
]


def name_cases() -> list[Case]:
    cases = []
    for label, name, detail in BAD_NAMES:
        cases.append(invalid(f"bridge-name-{label}", "POST", "/v1/bridges", {"name": name}, detail))
        cases.append(invalid(f"tap-name-{label}", "POST", "/v1/taps", {"name": name}, detail))
    return cases


def mac_cases() -> list[Case]:
    cases = []
    for label, mac in BAD_MACS:
        cases += [
            invalid(f"bridge-mac-{label}", "POST", "/v1/bridges", {"name": "brx", "mac": mac}),
            invalid(f"tap-mac-{label}", "POST", "/v1/taps", {"name": "tapx", "mac": mac}),
            invalid(f"patch-tap-mac-{label}", "PATCH", "/v1/taps/tap1", {"mac": mac}),
        ]
    return cases


def cidr_cases() -> list[Case]:
    cases = []
    for label, cidr in BAD_CIDRS:
        cases += [
            invalid(
                f"bridge-cidr-{label}", "POST", "/v1/bridges", {"name": "brx", "addresses": [cidr]}
            ),
            invalid(
                f"patch-bridge-cidr-{label}", "PATCH", "/v1/bridges/br0", {"addresses": [cidr]}
            ),
            invalid(f"tap-cidr-{label}", "POST", "/v1/taps", {"name": "tapx", "addresses": [cidr]}),
        ]
    return cases


def type_and_range_cases() -> list[Case]:
    bridge = {"name": "brx"}
    tap = {"name": "tapx"}
    cases = [
        invalid("stp-string", "POST", "/v1/bridges", {**bridge, "stp": "yes"}),
        invalid("mtu-string", "POST", "/v1/bridges", {**bridge, "mtu": "1500"}),
        invalid("mtu-fraction", "POST", "/v1/taps", {**tap, "mtu": 1500.5}),  # 1500.0 is 1500
        invalid("mtu-bool", "POST", "/v1/taps", {**tap, "mtu": True}),
        invalid("addresses-string", "POST", "/v1/bridges", {**bridge, "addresses": "10.0.0.1/24"}),
        invalid(
            "addresses-repeat",
            "POST",
            "/v1/bridges",
            {**bridge, "addresses": ["fd00::1/64", "fd00:0::1/64"]},
        ),
        invalid("name-number", "POST", "/v1/bridges", {"name": 5}),
        invalid("forward-delay-string", "POST", "/v1/bridges", {**bridge, "forward_delay": "0"}),
        invalid("forward-delay-31", "POST", "/v1/bridges", {**bridge, "forward_delay": 31}),
        invalid("bridge-ref-number", "POST", "/v1/taps", {**tap, "bridge": 7}),
        invalid("multi-queue-string", "POST", "/v1/taps", {**tap, "multi_queue": "true"}),
        invalid("owner-negative", "POST", "/v1/taps", {**tap, "owner_uid": -1}),
        invalid("owner-invalid-uid", "POST", "/v1/taps", {**tap, "owner_uid": 2**31}),
        invalid("unknown-field-bridge", "POST", "/v1/bridges", {**bridge, "colour": "blue"}),
        invalid("unknown-field-tap", "POST", "/v1/taps", {**tap, "vlan": 5}),
        invalid("rename-by-patch", "PATCH", "/v1/bridges/br0", {"name": "renamed"}),
        invalid("missing-name", "POST", "/v1/bridges", {}),
        invalid("body-array", "POST", "/v1/bridges", [bridge]),
        invalid("no-body", "POST", "/v1/taps", None),
        invalid("attach-without-bridge", "POST", "/v1/taps/tap1/attach", {}),
    ]
    for mtu in (10, 67, 65522, 70000):
        cases += [
            invalid(f"bridge-mtu-{mtu}", "POST", "/v1/bridges", {**bridge, "mtu": mtu}),
            invalid(f"tap-mtu-{mtu}", "POST", "/v1/taps", {**tap, "mtu": mtu}),
            invalid(f"patch-tap-mtu-{mtu}", "PATCH", "/v1/taps/tap1", {"mtu": mtu}),
            invalid(f"patch-bridge-mtu-{mtu}", "PATCH", "/v1/bridges/br0", {"mtu": mtu}),
        ]
    return cases


def query_cases() -> list[Case]:
    return [
        invalid("wait-negative", "POST", "/v1/bridges?wait=-1", {"name": "brx"}),
        invalid("wait-too-long", "POST", "/v1/taps?wait=601", {"name": "tapx"}),
        invalid("wait-not-number", "DELETE", "/v1/taps/tap1?wait=soon", None),
        invalid("limit-zero", "GET", "/v1/taps?limit=0", None),
        invalid("limit-huge", "GET", "/v1/bridges?limit=1001", None),
        invalid("cursor-garbage", "GET", "/v1/taps?cursor=zzz", None),
        invalid("detach-taps-not-bool", "DELETE", "/v1/bridges/br0?detach_taps=maybe", None),
    ]


def body_format_cases() -> list[Case]:
    big = json.dumps({"name": "brx", "padding": "x" * TWO_MIB}).encode()
    return [
        Case(
            "two-mib",
            "POST",
            "/v1/bridges",
            content=big,
            headers=JSON,
            status=413,
            kind="body-too-large",
        ),
        Case(
            "text-plain",
            "POST",
            "/v1/bridges",
            content=b'{"name": "brx"}',
            headers={"content-type": "text/plain"},
            status=415,
            kind="unsupported-media-type",
        ),
        Case(
            "no-content-type",
            "POST",
            "/v1/taps",
            content=b'{"name": "tapx"}',
            status=415,
            kind="unsupported-media-type",
        ),
        Case(
            "form-encoded",
            "POST",
            "/v1/bridges",
            content=b"name=brx",
            headers={"content-type": "application/x-www-form-urlencoded"},
            status=415,
            kind="unsupported-media-type",
        ),
        Case("malformed-json", "POST", "/v1/bridges", content=b'{"name": "brx"', headers=JSON),
        Case(
            "trailing-garbage", "PATCH", "/v1/taps/tap1", content=b'{"mtu": 1400} x', headers=JSON
        ),
        Case("json-null", "POST", "/v1/taps", content=b"null", headers=JSON),
        # not UTF-8 (RFC 8259 section 8.1): a 422 like any other body that is not JSON, saying
        # why (app/api/strict.py; FastAPI alone answered a bare 400)
        Case(
            "not-utf8",
            "POST",
            "/v1/taps",
            content=b'{"name": "\xff\xfe"}',
            headers=JSON,
            detail_has="not UTF-8",
        ),
    ]


def reference_cases() -> list[Case]:
    """Unknown references are 404 (the API resolves body references like path ones);
    names are unique across bridges and taps (409 name-taken)."""
    missing = {"status": 404, "kind": "not-found"}
    taken = {"status": 409, "kind": "name-taken"}
    return [
        Case(
            "tap-unknown-bridge",
            "POST",
            "/v1/taps",
            json={"name": "tapx", "bridge": "nope"},
            detail_has="nope",
            **missing,
        ),
        Case(
            "attach-unknown-bridge",
            "POST",
            "/v1/taps/tap1/attach",
            json={"bridge": "nope"},
            **missing,
        ),
        Case("patch-unknown-bridge", "PATCH", "/v1/taps/tap1", json={"bridge": "nope"}, **missing),
        Case("get-unknown-tap", "GET", "/v1/taps/nope", **missing),
        Case(
            "patch-unknown-bridge-path", "PATCH", "/v1/bridges/nope", json={"mtu": 1400}, **missing
        ),
        Case("delete-unknown-tap", "DELETE", "/v1/taps/nope", **missing),
        Case("fdb-unknown-bridge", "GET", "/v1/bridges/nope/fdb", **missing),
        Case("unknown-operation", "GET", "/v1/operations/nope", **missing),
        Case("bridge-named-like-bridge", "POST", "/v1/bridges", json={"name": "br0"}, **taken),
        Case("bridge-named-like-tap", "POST", "/v1/bridges", json={"name": "tap1"}, **taken),
        Case("tap-named-like-bridge", "POST", "/v1/taps", json={"name": "br0"}, **taken),
        Case("tap-named-like-tap", "POST", "/v1/taps?wait=5", json={"name": "tap1"}, **taken),
    ]


def network_cases() -> list[Case]:
    """Managed networks and port forwards (nat0 on br9 is 10.91.0.0/24; VM web is on it,
    VM lone is not)."""
    conflict = {"status": 409, "kind": "conflict"}
    forward = {"network": "nat0", "vm": "web", "port": 8080}
    network = {"name": "n2", "bridge": "br0"}
    return [
        Case(
            "network-overlapping-subnet",
            "POST",
            "/v1/networks",
            json={**network, "subnet": "10.91.0.128/25"},
            detail_has="overlaps 10.91.0.0/24 of network 'nat0'",
            **conflict,
        ),
        invalid(
            "network-gateway-outside",
            "POST",
            "/v1/networks",
            {**network, "subnet": "10.92.0.0/24", "gateway": "10.93.0.1"},
            "outside the subnet",
        ),
        invalid(
            "network-range-outside",
            "POST",
            "/v1/networks",
            {
                **network,
                "subnet": "10.92.0.0/24",
                "dhcp": {"range_start": "10.92.1.1", "range_end": "10.92.1.9"},
            },
            "outside the subnet",
        ),
        invalid("forward-port-0", "POST", "/v1/port-forwards", {**forward, "port": 0}, "outside"),
        invalid(
            "forward-port-65536", "POST", "/v1/port-forwards", {**forward, "port": 65536}, "outside"
        ),
        invalid(
            "forward-to-vm-off-the-network",
            "POST",
            "/v1/port-forwards",
            {**forward, "vm": "lone"},
            "has no NIC on network 'nat0'",
        ),
        invalid(
            "forward-batch-with-one-bad-item",
            "POST",
            "/v1/port-forwards/batch",
            {"port_forwards": [{**forward, "port": 9000}, {**forward, "port": 0}]},
            "port_forwards[1]",
        ),
    ]


CASES = [
    *network_cases(),
    *name_cases(),
    *mac_cases(),
    *cidr_cases(),
    *type_and_range_cases(),
    *query_cases(),
    *body_format_cases(),
    *reference_cases(),
]


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    """One namespace for the module: every test here must leave the daemon's state alone."""
    with throwaway_netns() as name:
        yield name


@pytest.fixture(scope="module")
def daemon(
    netns: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[E2EDaemon]:
    """One daemon for the module (starting one costs more than all requests here), with
    br0 (IPv4 and IPv6 addresses) and tap1 attached to it."""
    with running_daemon(netns, tmp_path_factory.mktemp("bad-input"), request) as d:
        with d.client() as client:
            setup_resources(client)
        yield d


def setup_resources(client: httpx.Client) -> None:
    # a pinned MAC: otherwise the bridge takes tap1's when it joins, and the row records that
    # a moment later (observed_mac), which a snapshot taken meanwhile would call a change
    body = {
        "name": "br0",
        "mac": "02:00:00:00:01:05",
        "addresses": ["192.168.105.1/24", "fd00:105::1/64"],
    }
    ok(client.post("/v1/bridges?wait=10", json=body), 201)
    ok(client.post("/v1/taps?wait=10", json={"name": "tap1", "bridge": "br0"}), 201)
    # a managed network with one (powered off) VM on it, and one VM elsewhere
    ok(client.post("/v1/bridges?wait=10", json={"name": "br9"}), 201)
    network = {"name": "nat0", "bridge": "br9", "subnet": "10.91.0.0/24"}
    ok(client.post("/v1/networks?wait=10", json=network), 201)
    for name, nic in (
        ("web", {"backend": "bridge", "bridge": "br9"}),
        ("lone", {"backend": "user"}),
    ):
        vm = {"name": name, "power_state": "stopped", "boot": {"kernel": "/x"}, "nics": [nic]}
        ok(client.post("/v1/vms?wait=10", json=vm), 201, 202)


def changes(
    before: dict[str, list[dict[str, Any]]], after: dict[str, list[dict[str, Any]]]
) -> list[str]:
    """What differs between two API snapshots, field by field (for a readable failure)."""
    found = []
    for collection, items in after.items():
        old = {item["id"]: item for item in before.get(collection, [])}
        for item in items:
            was = old.pop(item["id"], None)
            if was is None:
                found.append(f"{collection}: new {item.get('name')}")
                continue
            for key in sorted(set(item) | set(was)):
                if item.get(key) != was.get(key):
                    name, old_value, new_value = item.get("name"), was.get(key), item.get(key)
                    found.append(f"{collection} {name}.{key}: {old_value!r} -> {new_value!r}")
        found.extend(f"{collection}: gone {item.get('name')}" for item in old.values())
    return found


def api_snapshot(client: httpx.Client) -> dict[str, list[dict[str, Any]]]:
    collections = ("bridges", "taps", "networks", "port-forwards", "vms")
    return {collection: list_all(client, collection) for collection in collections}


def assert_case(client: httpx.Client, case: Case) -> None:
    problem = assert_problem(case.send(client), case.status)
    assert problem["type"] == f"urn:kvmnetd:problem:{case.kind}", problem
    if case.detail_has is not None:
        assert case.detail_has in problem["detail"], problem


def test_bad_input_is_refused_and_changes_nothing(
    daemon: E2EDaemon, netns: str, subtests: pytest.Subtests
) -> None:
    with daemon.client() as client:
        kernel_before = kernel_snapshot(netns)
        api_before = api_snapshot(client)
        rules_before = nft_rules(netns)
        for case in CASES:
            with subtests.test(msg=case.id):
                assert_case(client, case)
        assert kernel_snapshot(netns) == kernel_before
        assert changes(api_before, api_snapshot(client)) == []
        assert nft_rules(netns) == rules_before
        assert ok(client.get("/readyz"), 200)["status"] == "ready"


def assert_refused_and_nothing_changed(
    client: httpx.Client, netns: str, send: Any, status: int, kind: str
) -> None:
    kernel_before = kernel_snapshot(netns)
    api_before = api_snapshot(client)
    problem = assert_problem(send(), status)
    assert problem["type"] == f"urn:kvmnetd:problem:{kind}", problem
    assert kernel_snapshot(netns) == kernel_before
    assert changes(api_before, api_snapshot(client)) == []


def test_chunked_body_over_the_limit_is_413(daemon: E2EDaemon, netns: str) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"name": "brx", "padding": "'
        for _ in range(64):
            yield b"x" * (32 << 10)
        yield b'"}'

    with daemon.client() as client:
        assert_refused_and_nothing_changed(
            client,
            netns,
            lambda: client.post("/v1/bridges", content=chunks(), headers=JSON),
            413,
            "body-too-large",
        )


def test_names_the_kernel_reserves_are_refused(daemon: E2EDaemon, netns: str) -> None:
    with daemon.client() as client:
        for name in ("all", "default"):
            assert_refused_and_nothing_changed(
                client,
                netns,
                lambda n=name: client.post("/v1/taps?wait=5", json={"name": n}),
                422,
                "invalid-input",
            )


def test_ipv6_address_with_tiny_mtu_is_refused(daemon: E2EDaemon, netns: str) -> None:
    body = {"name": "br6", "mtu": 1000, "addresses": ["fd00:6::1/64"]}
    with daemon.client() as client:
        assert_refused_and_nothing_changed(
            client,
            netns,
            lambda: client.post("/v1/bridges?wait=5", json=body),
            422,
            "invalid-input",
        )
