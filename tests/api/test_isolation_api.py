"""Bridge port isolation (issue 11): `isolated` on taps and bridge VM NICs, against the real
kernel of a fresh namespace. The flag is read back with iproute2 (`bridge -j -d link show`),
not with the daemon's own decoder; a change by hand is repaired; a re-created bridge gets
its isolated ports back; where isolation cannot apply the request is refused."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api.deps import AppContext
from app.host.inspect import LiveHostInspector
from app.settings import Settings
from tests.api.test_links_api import make_bridge, make_tap
from tests.kernel.nested.conftest import wired_guest
from tests.netns_tools import in_netns, ip, links

PROBLEM = "application/problem+json"


def port_isolated(ns: str, name: str) -> bool | None:
    """The bridge port flag as iproute2 reports it; None for a link that is no port."""
    shown = json.loads(in_netns(ns, "bridge", "-j", "-d", "link", "show", "dev", name).stdout)
    return bool(shown[0]["isolated"]) if shown else None


def until(check: Callable[[], bool], timeout: float = 10, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


class NoQemuInspector(LiveHostInspector):
    """The real inspector with a qemu that does not exist: its probe is the link probe (and
    the rest answered at once), so asking whether the kernel isolates ports costs no qemu."""


class NoIsolationInspector(NoQemuInspector):
    """The real probe, except that its answer says the kernel ignores the port flag (as a
    kernel before 4.18 does)."""

    def capabilities(self) -> dict[str, Any]:
        caps = copy.deepcopy(super().capabilities())
        caps["links"]["port_isolation"] = {
            "available": False,
            "reason": "the kernel ignored isolated=1 on a bridge port",
        }
        return caps


def _inject(api: TestClient, inspector: LiveHostInspector) -> Iterator[TestClient]:
    ctx: AppContext = api.app.state.context  # type: ignore[attr-defined]
    real = ctx.inspector
    ctx.inspector = inspector
    try:
        yield api
    finally:
        ctx.inspector = real
        inspector.close()


@pytest.fixture
def iso_api(api: TestClient, netns: str, settings: Settings) -> Iterator[TestClient]:
    inspector = NoQemuInspector(
        netns=netns, qemu_binary="kvt-no-qemu", run_dir=settings.run_dir / "iso-probe"
    )
    yield from _inject(api, inspector)


@pytest.fixture
def no_iso_api(api: TestClient, netns: str, settings: Settings) -> Iterator[TestClient]:
    inspector = NoIsolationInspector(
        netns=netns, qemu_binary="kvt-no-qemu", run_dir=settings.run_dir / "iso-probe"
    )
    yield from _inject(api, inspector)


def tap(api: TestClient, name: str) -> dict[str, Any]:
    r = api.get(f"/v1/taps/{name}")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def patch(api: TestClient, name: str, **body: object) -> dict[str, Any]:
    r = api.patch(f"/v1/taps/{name}?wait=10", json=body)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_the_probe_reports_that_this_kernel_isolates_ports(iso_api: TestClient) -> None:
    caps = iso_api.get("/v1/host/capabilities").json()["links"]
    assert caps["port_isolation"] == {
        "available": True,
        "reason": None,
        "kernel_config": None,
        "module": None,
    }


def test_an_isolated_tap_is_set_read_back_changed_live_and_repaired(
    iso_api: TestClient, netns: str
) -> None:
    api = iso_api
    make_bridge(api, addresses=["10.88.0.1/24"])
    one = make_tap(api, "tap1", bridge="br0", isolated=True)
    two = make_tap(api, "tap2", bridge="br0")
    three = make_tap(api, "tap3", bridge="br0", isolated=None)  # null: false
    assert (one["isolated"], one["observed_isolated"]) == (True, True)
    assert (two["isolated"], two["observed_isolated"]) == (False, False)
    assert (three["isolated"], three["observed_isolated"]) == (False, False)
    assert [port_isolated(netns, n) for n in ("tap1", "tap2", "tap3")] == [True, False, False]
    ports = {p["name"]: p["isolated"] for p in api.get("/v1/bridges/br0").json()["ports"]}
    assert ports == {"tap1": True, "tap2": False, "tap3": False}

    # PATCH: live, the same link (no re-create)
    after = patch(api, "tap2", isolated=True)
    assert (after["isolated"], after["observed_isolated"]) == (True, True)
    assert port_isolated(netns, "tap2") is True
    assert links(netns)["tap2"].index == two["ifindex"]
    after = patch(api, "tap1", isolated=None)  # null: false
    assert (after["isolated"], after["observed_isolated"]) == (False, False)
    assert port_isolated(netns, "tap1") is False

    # drift: `bridge link set` (reported only as an AF_BRIDGE message) and `ip link set
    # type bridge_slave` (an AF_UNSPEC one), each repaired at once
    in_netns(netns, "bridge", "link", "set", "dev", "tap2", "isolated", "off")
    until(lambda: port_isolated(netns, "tap2") is True, 5, "tap2 isolated again")
    ip(netns, "link", "set", "dev", "tap1", "type", "bridge_slave", "isolated", "on")
    until(lambda: port_isolated(netns, "tap1") is False, 5, "tap1 not isolated again")
    until(lambda: tap(api, "tap2")["observed_isolated"] is True, 5, "GET shows it")

    # a bridge deleted by hand is re-created and its ports join it isolated as before
    ip(netns, "link", "del", "br0")
    until(lambda: links(netns).get("tap2", None) is not None, 5)
    until(lambda: port_isolated(netns, "tap2") is True, 10, "tap2 back on br0, isolated")
    assert port_isolated(netns, "tap1") is False
    assert links(netns)["tap2"].master == "br0"

    # a tap re-created (multi_queue only at creation) comes back isolated
    after = patch(api, "tap2", multi_queue=True)
    assert links(netns)["tap2"].index != two["ifindex"]
    assert port_isolated(netns, "tap2") is True
    assert after["observed_isolated"] is True


def test_a_detached_tap_is_no_port_and_no_longer_isolated(iso_api: TestClient, netns: str) -> None:
    api = iso_api
    make_bridge(api)
    make_tap(api, "tap1", bridge="br0", isolated=True)
    r = api.post("/v1/taps/tap1/detach?wait=10")
    assert r.status_code == 200, r.text
    assert (r.json()["isolated"], r.json()["observed_isolated"]) == (False, None)
    assert port_isolated(netns, "tap1") is None
    r = api.post("/v1/taps/tap1/attach?wait=10", json={"bridge": "br0"})
    assert port_isolated(netns, "tap1") is False
    patch(api, "tap1", isolated=True)
    after = patch(api, "tap1", bridge=None)  # leaving the bridge turns it off too
    assert (after["isolated"], after["observed_isolated"]) == (False, None)
    # a bridge deleted with force detaches its taps: they are not isolated any more
    patch(api, "tap1", bridge="br0", isolated=True)
    assert api.delete("/v1/bridges/br0?force=true&wait=10").status_code == 204
    assert tap(api, "tap1")["isolated"] is False


def problem(r: Any, status: int, kind: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body: dict[str, Any] = r.json()
    assert body["type"].endswith(kind), body
    return body


def test_isolation_where_it_cannot_apply_is_refused_and_changes_nothing(
    iso_api: TestClient, netns: str
) -> None:
    api = iso_api
    make_bridge(api)
    body = problem(
        api.post("/v1/taps", json={"name": "tap1", "isolated": True}), 422, "invalid-input"
    )
    assert "isolated" in body["detail"] and "no bridge" in body["detail"]
    assert api.get("/v1/taps/tap1").status_code == 404
    make_tap(api, "tap1")
    body = problem(api.patch("/v1/taps/tap1", json={"isolated": True}), 422, "invalid-input")
    assert "no bridge" in body["detail"]
    make_tap(api, "tap2", bridge="br0", isolated=True)
    body = problem(
        api.patch("/v1/taps/tap2", json={"bridge": None, "isolated": True}), 422, "invalid-input"
    )
    assert tap(api, "tap2")["isolated"] is True and tap(api, "tap2")["bridge_id"] is not None
    problem(api.post("/v1/taps", json={"name": "t", "isolated": "yes"}), 422, "invalid-input")

    # VM NICs: only a bridge NIC's own tap is a port this flag is for
    vm = {"name": "vm1", "boot": {"disk": "/nonexistent.img"}, "power_state": "stopped"}
    for nic, words in (
        ({"backend": "user"}, "the user backend has none"),
        ({"backend": "socket", "socket": {"mode": "listen"}}, "the socket backend has none"),
        ({"backend": "hub", "hub": 0}, "the hub backend has none"),
        ({"backend": "tap", "tap": "tap1"}, "the tap resource is isolated itself"),
    ):
        r = api.post("/v1/vms", json={**vm, "nics": [{**nic, "isolated": True}]})
        assert words in problem(r, 422, "invalid-input")["detail"], r.text
    assert api.get("/v1/vms").json()["items"] == []


def test_a_host_whose_kernel_ignores_the_flag_refuses_it_with_409(
    no_iso_api: TestClient, netns: str
) -> None:
    api = no_iso_api
    make_bridge(api)
    caps = api.get("/v1/host/capabilities").json()["links"]
    assert caps["port_isolation"]["available"] is False
    r = api.post("/v1/taps", json={"name": "tap1", "bridge": "br0", "isolated": True})
    body = problem(r, 409, "host-lacks-feature")
    assert body["missing_features"][0]["feature"] == "port_isolation"
    assert "ignored isolated=1" in body["detail"]
    make_tap(api, "tap1", bridge="br0", isolated=False)  # asking for none is fine
    problem(api.patch("/v1/taps/tap1", json={"isolated": True}), 409, "host-lacks-feature")
    vm = {"name": "vm1", "boot": {"disk": "/nonexistent.img"}, "power_state": "stopped"}
    nic = {"backend": "bridge", "bridge": "br0", "isolated": True}
    problem(api.post("/v1/vms", json={**vm, "nics": [nic]}), 409, "host-lacks-feature")
    assert api.get("/v1/vms").json()["items"] == []
    assert port_isolated(netns, "tap1") is False


def pings(guest: str, address: str, attempts: int = 5) -> bool:
    """Whether `address` answers a ping from the guest namespace (busybox, as in a guest)."""
    ping = ["busybox", "ping", "-c", "1", "-W", "1", address]
    return any(in_netns(guest, *ping, check=False).returncode == 0 for _ in range(attempts))


def test_isolated_ports_reach_the_gateway_but_not_each_other(
    iso_api: TestClient, netns: str
) -> None:
    """Two guests (namespaces wired to the taps by tap_wire.py, as qemu holds a tap) on one
    bridge that carries the gateway address: isolated, both reach the gateway and not each
    other; one port not isolated, they reach each other (an isolated port forwards to
    ports that are not isolated); neither isolated, as any bridge."""
    api = iso_api
    make_bridge(api, addresses=["10.88.0.1/24"])
    make_tap(api, "tapa", bridge="br0", isolated=True)
    make_tap(api, "tapb", bridge="br0", isolated=True)
    with wired_guest(netns, "tapa") as a, wired_guest(netns, "tapb") as b:
        ip(a, "addr", "add", "10.88.0.2/24", "dev", "eth0")
        ip(b, "addr", "add", "10.88.0.3/24", "dev", "eth0")
        assert pings(a, "10.88.0.1") and pings(b, "10.88.0.1"), "the gateway answers both"
        assert not pings(a, "10.88.0.3", attempts=2), "an isolated guest reached its neighbour"
        assert not pings(b, "10.88.0.2", attempts=2), "an isolated guest reached its neighbour"
        patch(api, "tapa", isolated=False)
        assert pings(b, "10.88.0.2") and pings(a, "10.88.0.3")
        patch(api, "tapa", isolated=True)
        assert not pings(a, "10.88.0.3", attempts=2), "isolated again, live"
        patch(api, "tapa", isolated=False)
        patch(api, "tapb", isolated=False)
        assert pings(a, "10.88.0.3") and pings(b, "10.88.0.2")
