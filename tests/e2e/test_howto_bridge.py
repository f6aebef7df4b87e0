"""The how-to's bridged setup (br0 with STP off, forward delay 0, 192.168.105.1/24, tap1 and
tap2 enslaved) done through the real daemon's API, checked against the kernel, then taken
apart again: detach, MTU change, deletes (409 while taps are attached)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import E2EDaemon, assert_problem, ok, running_daemon
from tests.netns_tools import links

pytestmark = pytest.mark.e2e


@pytest.fixture
def daemon(netns: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[E2EDaemon]:
    with running_daemon(netns, tmp_path, request) as d:
        yield d


BRIDGE_ADDRESS = "192.168.105.1/24"


def create_bridge(client: httpx.Client) -> dict[str, Any]:
    body = {"name": "br0", "stp": False, "forward_delay": 0, "addresses": [BRIDGE_ADDRESS]}
    bridge = ok(client.post("/v1/bridges?wait=10", json=body), 201)
    assert bridge["status"] == "active", bridge
    return bridge


def create_tap(client: httpx.Client, name: str, bridge: str | None = "br0") -> dict[str, Any]:
    tap = ok(client.post("/v1/taps?wait=10", json={"name": name, "bridge": bridge}), 201)
    assert tap["status"] == "active", tap
    return tap


def assert_howto_kernel(netns: str, bridge: dict[str, Any], taps: list[dict[str, Any]]) -> None:
    kernel = links(netns)
    br0 = kernel["br0"]
    assert br0.kind == "bridge"
    assert br0.info["IFLA_BR_STP_STATE"] == 0
    assert br0.info["IFLA_BR_FORWARD_DELAY"] == 0
    assert BRIDGE_ADDRESS in br0.addresses
    assert br0.up
    assert br0.alias == f"kvmnetd:bridge:{bridge['id']}"
    assert br0.index == bridge["ifindex"]
    for tap in taps:
        link = kernel[tap["name"]]
        assert link.kind == "tun", link
        assert link.master == "br0", link
        assert link.up, link
        assert link.alias == f"kvmnetd:tap:{tap['id']}", link
        assert link.index == tap["ifindex"]
        assert tap["bridge_id"] == bridge["id"]


def assert_ports_and_fdb(client: httpx.Client, netns: str, taps: list[dict[str, Any]]) -> None:
    """brctl show and brctl showmacs, through the API, against the kernel's own MACs."""
    bridge = ok(client.get("/v1/bridges/br0"), 200)
    ports = {p["name"]: p for p in bridge["ports"]}
    assert set(ports) == {t["name"] for t in taps}
    for tap in taps:
        assert ports[tap["name"]]["tap_id"] == tap["id"]
        assert ports[tap["name"]]["ifindex"] == tap["ifindex"]
    fdb = ok(client.get("/v1/bridges/br0/fdb"), 200)
    assert isinstance(fdb, list)
    kernel = links(netns)
    for tap in taps:
        own_mac = kernel[tap["name"]].mac
        local = [e for e in fdb if e["mac"] == own_mac and e["port"] == tap["name"]]
        assert local, f"no fdb entry for {tap['name']}'s own MAC {own_mac}: {fdb}"
        assert local[0]["is_local"] is True
        assert local[0]["port_index"] == tap["ifindex"]
        assert local[0]["ageing_timer"] is None


def test_howto_bridge_lifecycle(daemon: E2EDaemon, netns: str) -> None:
    with daemon.client() as client:
        bridge = create_bridge(client)
        tap1 = create_tap(client, "tap1")
        tap2 = create_tap(client, "tap2")
        assert_howto_kernel(netns, bridge, [tap1, tap2])
        assert_ports_and_fdb(client, netns, [tap1, tap2])

        # brctl delif br0 tap2
        detached = ok(client.post("/v1/taps/tap2/detach?wait=10"), 200)
        assert detached["bridge_id"] is None
        kernel = links(netns)
        assert kernel["tap2"].master is None
        assert kernel["tap1"].master == "br0"
        ports = ok(client.get("/v1/bridges/br0"), 200)["ports"]
        assert [p["name"] for p in ports] == ["tap1"]

        # MTU change applies to the kernel
        patched = ok(client.patch("/v1/taps/tap1?wait=10", json={"mtu": 1400}), 200)
        assert patched["mtu"] == 1400
        assert patched["observed_generation"] == patched["generation"]
        assert links(netns)["tap1"].mtu == 1400

        # a bridge with attached taps is not deleted without ?detach_taps=true
        refused = assert_problem(client.delete("/v1/bridges/br0"), 409)
        assert refused["type"] == "urn:kvmnetd:problem:in-use"
        assert "tap1" in refused["detail"]
        assert "br0" in links(netns)
        assert ok(client.get("/v1/bridges/br0"), 200)["status"] == "active"

        deleted = client.delete("/v1/taps/tap1?wait=10")
        assert deleted.status_code == 204, deleted.text
        assert "tap1" not in links(netns)
        assert_problem(client.get("/v1/taps/tap1"), 404)

        # re-attach tap2, then delete the bridge detaching it
        attached = ok(client.post("/v1/taps/tap2/attach?wait=10", json={"bridge": "br0"}), 200)
        assert attached["bridge_id"] == bridge["id"]
        assert links(netns)["tap2"].master == "br0"
        assert_problem(client.delete("/v1/bridges/br0"), 409)
        gone = client.delete("/v1/bridges/br0?detach_taps=true&wait=10")
        assert gone.status_code == 204, gone.text
        kernel = links(netns)
        assert "br0" not in kernel
        assert kernel["tap2"].master is None
        assert kernel["tap2"].index == tap2["ifindex"]  # detached, not re-created
        tap2_now = ok(client.get("/v1/taps/tap2"), 200)
        assert tap2_now["bridge_id"] is None
        assert tap2_now["status"] == "active"
        assert_problem(client.get("/v1/bridges/br0"), 404)

        assert client.delete("/v1/taps/tap2?wait=10").status_code == 204
        assert_problem(client.get("/v1/taps/tap2"), 404)
        assert set(links(netns)) == {"lo"}
        assert ok(client.get("/v1/taps"), 200)["items"] == []
        assert ok(client.get("/v1/bridges"), 200)["items"] == []


def bridge_options(netns: str, name: str) -> tuple[int, int]:
    """(STP state, forward delay in centiseconds) as the kernel has them."""
    info = links(netns)[name].info
    return int(info["IFLA_BR_STP_STATE"]), int(info["IFLA_BR_FORWARD_DELAY"])


def test_stp_off_with_forward_delay_0_on_an_stp_bridge(daemon: E2EDaemon, netns: str) -> None:
    """The how-to's settings (bridge_stp off, bridge_fd 0) applied to an existing STP bridge."""
    with daemon.client() as client:
        body = {"name": "brs", "stp": True, "forward_delay": 15}
        ok(client.post("/v1/bridges?wait=10", json=body), 201)
        assert bridge_options(netns, "brs") == (1, 1500)
        change = {"stp": False, "forward_delay": 0}
        patched = ok(client.patch("/v1/bridges/brs?wait=10", json=change), 200)
        assert (patched["status"], patched["status_reason"]) == ("active", None)
        assert bridge_options(netns, "brs") == (0, 0)


def test_stp_on_with_forward_delay_below_2s(daemon: E2EDaemon, netns: str) -> None:
    """Either refused up front (422, nothing created) or applied as reported."""
    with daemon.client() as client:
        response = client.post("/v1/bridges?wait=10", json={"name": "brs", "stp": True})
        if response.is_client_error:
            assert_problem(response, 422)
            assert "brs" not in links(netns)
            return
        bridge = ok(response, 201)
        assert bridge["status"] == "active"
        stp, forward_delay_cs = bridge_options(netns, "brs")
        assert stp == 1
        assert forward_delay_cs == round(bridge["forward_delay"] * 100), bridge
