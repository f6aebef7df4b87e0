"""Drift repair against the real daemon: an admin changes our links by hand (`ip link del`,
`nomaster`, `down`) and the daemon puts them back within 2 s, reporting
`tap.drift_repaired` on /v1/events. The orphan sweep removes marked links the database does
not know, and never touches a link that is not ours, not even one holding a wanted name."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import (
    E2EDaemon,
    EventFollower,
    kernel_link,
    link_state,
    ok,
    running_daemon,
    wait_for,
)
from tests.netns_tools import KernelLink, ip, links

pytestmark = pytest.mark.e2e

REPAIR_SECONDS = 2.0


@pytest.fixture
def daemon(netns: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[E2EDaemon]:
    with running_daemon(netns, tmp_path, request) as d:
        yield d


def setup_bridge_with_tap(client: httpx.Client) -> tuple[dict[str, Any], dict[str, Any]]:
    body = {"name": "br0", "addresses": ["192.168.105.1/24"]}
    bridge = ok(client.post("/v1/bridges?wait=10", json=body), 201)
    tap = ok(client.post("/v1/taps?wait=10", json={"name": "tap1", "bridge": "br0"}), 201)
    return bridge, tap


def repaired(link: KernelLink, tap: dict[str, Any]) -> bool:
    return link.master == "br0" and link.up and link.alias == f"kvmnetd:tap:{tap['id']}"


def assert_drift_repaired(
    netns: str, events: EventFollower, tap: dict[str, Any], after: int
) -> KernelLink:
    """The tap is back as wanted within REPAIR_SECONDS and the repair was announced."""
    link = kernel_link(netns, "tap1", REPAIR_SECONDS, lambda k: repaired(k, tap))
    event = events.wait_for(
        REPAIR_SECONDS, after=after, type="tap.drift_repaired", resource_id=tap["id"]
    )
    assert event["name"] == "tap1"
    assert event["resource"] == "tap"
    return link


def test_hand_made_drift_is_repaired(daemon: E2EDaemon, netns: str) -> None:
    with daemon.client() as client, EventFollower(daemon) as events:
        _, tap = setup_bridge_with_tap(client)
        original = links(netns)["tap1"]

        mark = events.last_id()
        ip(netns, "link", "del", "tap1")
        link = assert_drift_repaired(netns, events, tap, mark)
        assert link.kind == "tun"
        assert link.index != original.index  # really re-created

        mark = events.last_id()
        ip(netns, "link", "set", "tap1", "nomaster")
        same = assert_drift_repaired(netns, events, tap, mark)
        assert same.index == link.index  # re-attached, not re-created

        mark = events.last_id()
        ip(netns, "link", "set", "tap1", "down")
        same = assert_drift_repaired(netns, events, tap, mark)
        assert same.index == link.index

        now = ok(client.get("/v1/taps/tap1"), 200)
        assert now["status"] == "active"
        assert now["ifindex"] == link.index
        assert now["observed_generation"] == now["generation"] == tap["generation"]
        repairs = [e for e in events.events if e["type"] == "tap.drift_repaired"]
        assert len(repairs) == 3, repairs  # one per change by hand, no fighting itself
    assert not events.errors


def test_bridge_deleted_by_hand_comes_back_with_its_ports(daemon: E2EDaemon, netns: str) -> None:
    with daemon.client() as client:
        bridge, tap = setup_bridge_with_tap(client)
        tap2 = ok(client.post("/v1/taps?wait=10", json={"name": "tap2", "bridge": "br0"}), 201)
        ip(netns, "link", "del", "br0")
        br0 = kernel_link(
            netns,
            "br0",
            REPAIR_SECONDS,
            lambda k: k.up and "192.168.105.1/24" in k.addresses,
        )
        assert br0.alias == f"kvmnetd:bridge:{bridge['id']}"
        for name, resource in (("tap1", tap), ("tap2", tap2)):
            kernel_link(
                netns,
                name,
                REPAIR_SECONDS,
                lambda k, r=resource: k.master == "br0" and k.alias == f"kvmnetd:tap:{r['id']}",
            )


def make_orphan(netns: str, name: str) -> None:
    """A tap marked as ours, for a resource id the database has never heard of."""
    ip(netns, "tuntap", "add", "dev", name, "mode", "tap")
    ip(netns, "link", "set", name, "alias", f"kvmnetd:tap:{uuid.uuid4()}")


def make_foreign_links(netns: str) -> dict[str, tuple[object, ...]]:
    """Links the daemon must never touch: unmarked, and with someone else's alias."""
    ip(netns, "link", "add", "foreign0", "type", "bridge")
    ip(netns, "tuntap", "add", "dev", "foreign1", "mode", "tap")
    ip(netns, "link", "set", "foreign1", "alias", "libvirt:net:default")
    ip(netns, "link", "add", "foreign2", "type", "bridge")
    ip(netns, "link", "set", "foreign2", "alias", "kvmnetd:vm:not-a-link-kind-of-ours")
    kernel = links(netns)
    return {name: link_state(kernel[name]) for name in ("foreign0", "foreign1", "foreign2")}


def assert_untouched(netns: str, before: dict[str, tuple[object, ...]]) -> None:
    kernel = links(netns)
    for name, state in before.items():
        assert name in kernel, f"{name} was removed"
        assert link_state(kernel[name]) == state, f"{name} was changed"


def test_orphans_swept_at_startup_and_on_resync(
    netns: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    foreign = make_foreign_links(netns)
    make_orphan(netns, "orphan1")
    with running_daemon(netns, tmp_path, request, reconcile_interval=1) as daemon:
        # the first full pass, finished before /readyz answers, sweeps it
        assert "orphan1" not in links(netns)
        assert_untouched(netns, foreign)

        with daemon.client() as client:  # ours must survive the sweep
            ok(client.post("/v1/bridges?wait=10", json={"name": "br0"}), 201)
            ok(client.post("/v1/taps?wait=10", json={"name": "tap1", "bridge": "br0"}), 201)
        ours = {n: link_state(links(netns)[n]) for n in ("br0", "tap1")}
        make_orphan(netns, "orphan2")  # nothing tells the daemon: only the timer finds it
        wait_for(lambda: "orphan2" not in links(netns), 3.0, "the periodic resync to sweep")
        assert_untouched(netns, foreign)
        assert_untouched(netns, ours)


def test_orphan_swept_after_restart(
    netns: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with running_daemon(netns, tmp_path, request) as daemon:
        with daemon.client() as client:
            ok(client.post("/v1/taps?wait=10", json={"name": "tap1"}), 201)
        daemon.kill()
        foreign = make_foreign_links(netns)
        make_orphan(netns, "orphan1")
        tap1 = link_state(links(netns)["tap1"])
        daemon.start()
        assert "orphan1" not in links(netns)
        assert_untouched(netns, foreign)
        assert_untouched(netns, {"tap1": tap1})


def test_foreign_link_holding_a_wanted_name_is_left_alone(daemon: E2EDaemon, netns: str) -> None:
    """A name a foreign link holds is refused at once (409 naming that link), and the link is
    never touched. (Should one appear between the create and the supervisor's pass, the
    resource reports it instead: tests/host/test_reconciler.py.)"""
    ip(netns, "link", "add", "tap9", "type", "bridge")
    before = links(netns)["tap9"]
    with daemon.client() as client:
        response = client.post("/v1/taps?wait=10", json={"name": "tap9"})
        assert response.status_code == 409, response.text
        assert "tap9" in response.json()["detail"], response.text
        assert client.get("/v1/taps").json()["items"] == []
    after = links(netns)["tap9"]
    assert (after.index, after.kind, after.alias) == (before.index, "bridge", None)
    assert link_state(after) == link_state(before)


def test_bridge_address_removed_by_hand_is_repaired(daemon: E2EDaemon, netns: str) -> None:
    with daemon.client() as client:
        setup_bridge_with_tap(client)
    ip(netns, "addr", "del", "192.168.105.1/24", "dev", "br0")
    kernel_link(netns, "br0", REPAIR_SECONDS, lambda k: "192.168.105.1/24" in k.addresses)


def test_stp_turned_on_by_hand_is_repaired(daemon: E2EDaemon, netns: str) -> None:
    with daemon.client() as client:
        setup_bridge_with_tap(client)
        ip(netns, "link", "set", "br0", "type", "bridge", "stp_state", "1")
        kernel_link(
            netns,
            "br0",
            REPAIR_SECONDS,
            lambda k: k.info["IFLA_BR_STP_STATE"] == 0 and k.info["IFLA_BR_FORWARD_DELAY"] == 0,
        )
        bridge = ok(client.get("/v1/bridges/br0"), 200)
        assert (bridge["status"], bridge["status_reason"]) == ("active", None)
