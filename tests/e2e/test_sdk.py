"""The generated SDK works: openapi-python-client turns openapi/openapi.json into a typed
Python client (no warnings, mypy --strict clean), and that client drives the real daemon over
its unix socket -- bridges, taps, pagination, attach/detach, deletes, and problem details --
with the effects checked in the kernel of the daemon's namespace."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import Daemon
from tests.e2e.helpers import E2EDaemon, running_daemon
from tests.e2e.sdk_helpers import PACKAGE, Sdk, forget_sdk, generate, import_sdk, mypy
from tests.netns_tools import links

pytestmark = pytest.mark.e2e

WAIT = 10.0
PROBLEM = "urn:kvmnetd:problem:"


@pytest.fixture(scope="session")
def sdk_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SDK, generated once per test session."""
    return generate(tmp_path_factory.mktemp("sdk")).root


@pytest.fixture(scope="session")
def sdk(sdk_root: Path) -> Iterator[Sdk]:
    yield import_sdk(sdk_root)
    forget_sdk()


@pytest.fixture
def daemon(netns: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[E2EDaemon]:
    """The real daemon; its clients close unix sockets whose connect() failed."""
    with running_daemon(netns, tmp_path, request) as d:
        yield d


@pytest.fixture
def client(sdk: Sdk, daemon: Daemon) -> Iterator[Any]:
    with sdk.client(daemon.socket) as c:
        yield c


def _problem(sdk: Sdk, response: Any, status: int, kind: str) -> Any:
    """The response's parsed Problem, checked against the status and problem type."""
    assert response.status_code == status, response.content
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.parsed
    assert isinstance(problem, sdk.models.Problem), problem
    assert problem.status == status
    assert problem.type_ == PROBLEM + kind
    assert problem.title
    assert problem.request_id == response.headers["x-request-id"]
    return problem


# What an SDK user writes; mypy --strict must accept it (the calls are typed, not Any).
USAGE = f'''\
"""Typed use of the generated SDK."""

from {PACKAGE} import Client
from {PACKAGE}.api.bridges import create_bridge, list_bridges
from {PACKAGE}.api.taps import update_tap
from {PACKAGE}.models import Bridge, BridgeCreate, BridgePage, Problem, Tap, TapUpdate
from {PACKAGE}.types import Unset


def create(client: Client) -> Bridge | Problem:
    response = create_bridge.sync_detailed(
        client=client, body=BridgeCreate(name="br0", mtu=1400), wait=10.0
    )
    parsed: Bridge | Problem | None = response.parsed  # None: undeclared status
    assert parsed is not None
    return parsed


def names(client: Client) -> list[str]:
    page = list_bridges.sync(client=client, limit=2)
    assert isinstance(page, BridgePage)
    cursor: str | None | Unset = page.next_cursor
    del cursor
    return [b.name for b in page.items]


def detach(client: Client, tap_id: str) -> Tap | Problem | None:
    return update_tap.sync(tap_id, client=client, body=TapUpdate(bridge=None))
'''

# ...and must reject (proof the types above are real, not Any).
MISUSE = f'''\
"""Wrongly typed use of the generated SDK."""

from {PACKAGE}.models import BridgeUpdate

BridgeUpdate(mtu="1400")
'''


def test_generated_sdk_is_typed(sdk_root: Path) -> None:
    (sdk_root / "usage.py").write_text(USAGE)
    (sdk_root / "misuse.py").write_text(MISUSE)
    result = mypy(sdk_root, PACKAGE, "usage.py", "misuse.py")
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1, result.stdout + result.stderr
    assert errors[0].startswith("misuse.py:5:") and "[arg-type]" in errors[0], errors


def test_bridge_and_taps_lifecycle(sdk: Sdk, client: Any, daemon: Daemon) -> None:
    m = sdk.models
    create_bridge = sdk.op("bridges", "create_bridge")
    get_bridge = sdk.op("bridges", "get_bridge")
    update_bridge = sdk.op("bridges", "update_bridge")
    delete_bridge = sdk.op("bridges", "delete_bridge")
    create_tap = sdk.op("taps", "create_tap")
    get_tap = sdk.op("taps", "get_tap")
    update_tap = sdk.op("taps", "update_tap")
    attach_tap = sdk.op("taps", "attach_tap")
    detach_tap = sdk.op("taps", "detach_tap")
    delete_tap = sdk.op("taps", "delete_tap")

    # create: 201 once settled within ?wait=, parsed into the typed model
    r = create_bridge.sync_detailed(
        client=client, body=m.BridgeCreate(name="br0", addresses=["192.168.105.1/24"]), wait=WAIT
    )
    assert r.status_code == 201, r.content
    bridge = r.parsed
    assert isinstance(bridge, m.Bridge)
    assert bridge.name == "br0"
    assert bridge.status == m.Status.ACTIVE
    assert bridge.generation == bridge.observed_generation == 1
    assert isinstance(bridge.created_at, dt.datetime)
    assert r.headers["location"] == f"/v1/bridges/{bridge.id}"

    taps = {}
    for name in ("tap1", "tap2"):
        r = create_tap.sync_detailed(
            client=client, body=m.TapCreate(name=name, bridge="br0"), wait=WAIT
        )
        assert r.status_code == 201, r.content
        assert isinstance(r.parsed, m.Tap)
        assert r.parsed.bridge_id == bridge.id
        assert r.parsed.status == m.Status.ACTIVE
        taps[name] = r.parsed

    kernel = links(daemon.netns)
    assert kernel["br0"].kind == "bridge"
    assert "192.168.105.1/24" in kernel["br0"].addresses
    for name, tap in taps.items():
        assert kernel[name].kind == "tun"
        assert kernel[name].master == "br0"
        assert kernel[name].alias == f"kvmnetd:tap:{tap.id}"

    # get (by id, and by name), with the ports the kernel reports
    got = get_bridge.sync(bridge.id, client=client)
    assert isinstance(got, m.Bridge)
    assert {p.name: p.tap_id for p in got.ports} == {n: t.id for n, t in taps.items()}
    assert isinstance(get_bridge.sync("br0", client=client), m.Bridge)
    got_tap = get_tap.sync(taps["tap1"].id, client=client)
    assert isinstance(got_tap, m.Tap)
    assert got_tap.name == "tap1"

    # patch: mtu of the bridge and of a tap
    r = update_bridge.sync_detailed(
        bridge.id, client=client, body=m.BridgeUpdate(mtu=1400), wait=WAIT
    )
    assert r.status_code == 200, r.content
    assert isinstance(r.parsed, m.Bridge)
    assert r.parsed.mtu == 1400
    assert r.parsed.generation == r.parsed.observed_generation == 2
    r = update_tap.sync_detailed(
        taps["tap2"].id, client=client, body=m.TapUpdate(mtu=1300), wait=WAIT
    )
    assert r.status_code == 200, r.content
    assert isinstance(r.parsed, m.Tap)
    assert r.parsed.mtu == 1300
    kernel = links(daemon.netns)
    assert kernel["br0"].mtu == 1400
    assert kernel["tap2"].mtu == 1300

    # patch bridge: null detaches (the SDK sends an explicit null, not an omitted field)
    r = update_tap.sync_detailed(
        taps["tap1"].id, client=client, body=m.TapUpdate(bridge=None), wait=WAIT
    )
    assert r.status_code == 200, r.content
    assert isinstance(r.parsed, m.Tap)
    assert r.parsed.bridge_id is None
    assert links(daemon.netns)["tap1"].master is None

    # attach / detach operations
    r = attach_tap.sync_detailed(
        taps["tap1"].id, client=client, body=m.TapAttach(bridge=bridge.id), wait=WAIT
    )
    assert r.status_code == 200, r.content
    assert isinstance(r.parsed, m.Tap)
    assert r.parsed.bridge_id == bridge.id
    assert links(daemon.netns)["tap1"].master == "br0"
    r = detach_tap.sync_detailed(taps["tap2"].id, client=client, wait=WAIT)
    assert r.status_code == 200, r.content
    assert isinstance(r.parsed, m.Tap)
    assert r.parsed.bridge_id is None
    kernel = links(daemon.netns)
    assert kernel["tap1"].master == "br0"
    assert kernel["tap2"].master is None

    # delete: a bridge with an attached tap is in use (409, listing its dependents)
    r = delete_bridge.sync_detailed(bridge.id, client=client, wait=WAIT)
    problem = _problem(sdk, r, 409, "in-use")
    dependents = [(str(d.kind), d.id, d.name) for d in problem.dependents]
    assert dependents == [("tap", taps["tap1"].id, "tap1")]
    assert "br0" in links(daemon.netns)

    # delete a tap without waiting: 202 and the pending resource...
    r = delete_tap.sync_detailed(taps["tap2"].id, client=client)
    assert r.status_code == 202, r.content
    assert isinstance(r.parsed, m.Tap)
    assert r.parsed.status in (m.Status.DELETING, m.Status.PENDING)
    # ...with waiting: 204, which the SDK parses to None
    r = delete_bridge.sync_detailed(bridge.id, client=client, wait=WAIT, detach_taps=True)
    assert r.status_code == 204, r.content
    assert r.parsed is None
    r = delete_tap.sync_detailed(taps["tap1"].id, client=client, wait=WAIT)
    assert r.status_code == 204, r.content
    assert r.parsed is None

    # deleting again waits for tap2 to go (204), unless it is already gone (404)
    r = delete_tap.sync_detailed(taps["tap2"].id, client=client, wait=WAIT)
    assert r.status_code in (204, 404), r.content

    _problem(sdk, get_bridge.sync_detailed(bridge.id, client=client), 404, "not-found")
    _problem(sdk, get_tap.sync_detailed(taps["tap2"].id, client=client), 404, "not-found")
    assert {"br0", "tap1", "tap2"}.isdisjoint(links(daemon.netns))


def test_pagination_follows_next_cursor(sdk: Sdk, client: Any) -> None:
    m = sdk.models
    create_tap = sdk.op("taps", "create_tap")
    list_taps = sdk.op("taps", "list_taps")
    create_bridge = sdk.op("bridges", "create_bridge")
    list_bridges = sdk.op("bridges", "list_bridges")

    names = [f"tp{i}" for i in range(5)]
    for name in names:
        r = create_tap.sync_detailed(client=client, body=m.TapCreate(name=name))
        assert r.status_code == 202, r.content
    r = create_bridge.sync_detailed(client=client, body=m.BridgeCreate(name="brp"))
    assert r.status_code == 202, r.content

    seen: list[str] = []
    pages = 0
    cursor: Any = sdk.types.UNSET
    while True:
        page = list_taps.sync(client=client, limit=2, cursor=cursor)
        assert isinstance(page, m.TapPage), page
        assert len(page.items) <= 2
        assert all(isinstance(t, m.Tap) for t in page.items)
        seen += [t.name for t in page.items]
        pages += 1
        if not isinstance(page.next_cursor, str):
            assert page.next_cursor is None
            break
        cursor = page.next_cursor
        assert pages < 10, "next_cursor never ends"
    assert sorted(seen) == names
    assert pages == 3

    page = list_bridges.sync(client=client, limit=1)
    assert isinstance(page, m.BridgePage)
    assert [b.name for b in page.items] == ["brp"]
    assert page.next_cursor is None


def test_problem_details(sdk: Sdk, client: Any) -> None:
    m = sdk.models
    create_bridge = sdk.op("bridges", "create_bridge")
    get_bridge = sdk.op("bridges", "get_bridge")
    get_tap = sdk.op("taps", "get_tap")
    update_tap = sdk.op("taps", "update_tap")
    attach_tap = sdk.op("taps", "attach_tap")
    create_tap = sdk.op("taps", "create_tap")

    r = create_bridge.sync_detailed(client=client, body=m.BridgeCreate(name="br0"))
    assert r.status_code == 202, r.content

    # 409: the name is taken (by a bridge, for a bridge and for a tap alike)
    r = create_bridge.sync_detailed(client=client, body=m.BridgeCreate(name="br0"))
    assert "br0" in _problem(sdk, r, 409, "name-taken").detail
    r = create_tap.sync_detailed(client=client, body=m.TapCreate(name="br0"))
    _problem(sdk, r, 409, "name-taken")

    # 404: unknown resources, and unknown references inside a valid request
    problem = _problem(sdk, get_bridge.sync_detailed("nope", client=client), 404, "not-found")
    assert problem.instance == "/v1/bridges/nope"
    _problem(sdk, get_tap.sync_detailed("nope", client=client), 404, "not-found")
    r = update_tap.sync_detailed("nope", client=client, body=m.TapUpdate(mtu=1400))
    _problem(sdk, r, 404, "not-found")
    r = create_tap.sync_detailed(client=client, body=m.TapCreate(name="tap9", bridge="nobr"))
    _problem(sdk, r, 404, "not-found")
    r = attach_tap.sync_detailed("nope", client=client, body=m.TapAttach(bridge="br0"))
    _problem(sdk, r, 404, "not-found")

    # 422: names the kernel would refuse or truncate, with the field errors
    for bad in ("this-name-is-too-long", "br 0", "br/0"):
        r = create_bridge.sync_detailed(client=client, body=m.BridgeCreate(name=bad))
        problem = _problem(sdk, r, 422, "invalid-input")
        assert isinstance(problem.errors, list) and problem.errors, problem
        assert problem.errors[0].loc == ["body", "name"]
        assert problem.errors[0].msg
    # sync() hands the same Problem back without the response around it
    problem = create_bridge.sync(client=client, body=m.BridgeCreate(name="x" * 16))
    assert isinstance(problem, m.Problem)
    assert problem.status == 422

    # nothing of the refused requests was half-applied
    listed = sdk.op("bridges", "list_bridges").sync(client=client)
    assert [b.name for b in listed.items] == ["br0"]
    assert sdk.op("taps", "list_taps").sync(client=client).items == []


def test_event_stream_through_the_sdk_client(sdk: Sdk, client: Any) -> None:
    """The generated stream_events reads the whole body (an event stream never ends), so an SDK
    user follows /v1/events with the Client's own httpx client; the transport is reused."""
    m = sdk.models
    r = sdk.op("bridges", "create_bridge").sync_detailed(
        client=client, body=m.BridgeCreate(name="br0"), wait=WAIT
    )
    assert r.status_code == 201, r.content
    bridge_id = r.parsed.id

    # Last-Event-ID 0 replays the history, so the bridge's events are there without a race
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + WAIT
    http = client.get_httpx_client()
    with http.stream("GET", "/v1/events", headers={"last-event-id": "0"}) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():  # pings (every 15 s) keep this loop turning
            if line.startswith("data:"):
                seen.append(json.loads(line.removeprefix("data:")))
                if seen[-1]["resource_id"] == bridge_id and seen[-1]["status"] == "active":
                    break
            assert time.monotonic() < deadline, f"no active event for the bridge in {seen}"
    event = seen[-1]
    assert event["resource"] == "bridge"
    assert event["name"] == "br0"
    assert event["generation"] == event["observed_generation"] == 1


def test_event_stream_problem(sdk: Sdk, client: Any) -> None:
    r = sdk.op("events", "stream_events").sync_detailed(client=client, resource="x" * 33)
    _problem(sdk, r, 422, "invalid-input")
