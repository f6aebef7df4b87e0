"""L2 stability through the API on the real kernel of a fresh namespace: a bridge keeps one
MAC and one MTU whatever ports come and go, taps take their bridge's MTU, and the observed
MAC, MTU and operational state follow netlink at once (not at the next full pass).

Every value is read back from the kernel with pyroute2 (tests.netns_tools), independently of the
code under test."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pyroute2 import IPRoute

from app.main import create_app
from app.settings import Settings
from tests.api.test_links_api import make_bridge, make_tap
from tests.db_template import seed_state_dir
from tests.guest.build import build_guest, kernel_cmdline
from tests.netns_tools import links


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    """No full pass during a test: whatever follows netlink does so on its own. The run
    directory is short (QMP socket paths) and reachable by qemu."""
    run_dir = Path(tempfile.mkdtemp(prefix="kvt-", dir="/tmp"))
    run_dir.chmod(0o755)
    yield Settings(
        state_dir=seed_state_dir(tmp_path / "state"),
        run_dir=run_dir,
        listen="",
        reconcile_interval=3600,
        probe_kernel=tmp_path / "no-kernel",
    )
    shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture
def api(netns: str, settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings, token="test-token", host_netns=netns)
    with TestClient(app, base_url="http://kvmnetd") as client:
        assert app.state.supervisor.ready.wait(10)
        client.app_state = app.state  # type: ignore[attr-defined]
        yield client


def locally_administered_unicast(mac: str) -> bool:
    first = int(mac.split(":")[0], 16)
    return bool(first & 0x02) and not first & 0x01


def eventually(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.02)


def event_types(api: TestClient, resource_id: str) -> list[str]:
    bus = api.app_state.context.bus  # type: ignore[attr-defined]
    return [e.type for e in bus.since(0) if e.resource_id == resource_id]


def set_link(netns: str, name: str, **attrs: object) -> None:
    """An admin's `ip link set` through pyroute2, behind the daemon's back."""
    with IPRoute(netns=netns) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=name)[0], **attrs)


# ---- one MAC for a bridge's whole life -----------------------------------------------------


def test_a_bridge_keeps_its_generated_mac_while_ports_come_and_go(
    api: TestClient, netns: str
) -> None:
    """The issue's input: a tap with the low MAC 02:00:00:00:00:02 joins br0, then is
    deleted. A bridge without a MAC of its own took its lowest port's MAC both times."""
    bridge = make_bridge(api, addresses=["192.168.100.1/24"])
    first = links(netns)["br0"].mac
    tap = make_tap(api, "tap1", bridge="br0", mac="02:00:00:00:00:02")
    assert links(netns)["tap1"].mac == "02:00:00:00:00:02"
    assert links(netns)["br0"].mac == first
    assert api.delete(f"/v1/taps/{tap['id']}?wait=10").status_code == 204
    assert links(netns)["br0"].mac == first
    generated = bridge["generated_mac"]
    assert bridge["mac"] is None and locally_administered_unicast(generated)
    assert first == generated == bridge["observed_mac"]
    assert api.get("/v1/bridges/br0").json()["observed_mac"] == generated
    # it was never changed and put back: no drift was ever repaired on the bridge
    assert "bridge.drift_repaired" not in event_types(api, bridge["id"])

    # a pinned MAC wins; unpinned (mac null), the bridge goes back to the generated one
    pinned = api.patch("/v1/bridges/br0?wait=10", json={"mac": "02:11:22:33:44:55"}).json()
    assert (pinned["mac"], pinned["generated_mac"]) == ("02:11:22:33:44:55", generated)
    assert links(netns)["br0"].mac == "02:11:22:33:44:55"
    unpinned = api.patch("/v1/bridges/br0?wait=10", json={"mac": None}).json()
    assert unpinned["mac"] is None and links(netns)["br0"].mac == generated

    other = make_bridge(api, "br1")
    assert other["generated_mac"] != generated and links(netns)["br1"].mac == other["generated_mac"]


def test_a_bridge_mac_changed_by_hand_is_put_back_at_once(api: TestClient, netns: str) -> None:
    bridge = make_bridge(api)
    set_link(netns, "br0", address="02:00:00:00:00:09")
    eventually(lambda: links(netns)["br0"].mac == bridge["generated_mac"], 1.0, "MAC repaired")
    eventually(
        lambda: "bridge.drift_repaired" in event_types(api, bridge["id"]), 1.0, "drift event"
    )


# ---- MTU -----------------------------------------------------------------------------------


def test_a_bridge_keeps_its_mtu_when_a_smaller_port_joins(api: TestClient, netns: str) -> None:
    """A bridge without an MTU of its own shrank to its smallest port (1500 -> 1280 when a
    1280 tap joined). It keeps the MTU it was created with, without ever dipping: no repair
    was needed, the kernel never lowered it."""
    bridge = make_bridge(api)
    tap = make_tap(api, "tap1", bridge="br0", mtu=1280)
    assert links(netns)["tap1"].mtu == 1280
    assert links(netns)["br0"].mtu == 1500
    assert bridge["mtu"] is None and bridge["observed_mtu"] == 1500
    assert tap["observed_mtu"] == 1280
    with IPRoute(netns=netns) as ipr:  # a foreign port too (the kernel lowers on any join)
        ipr.link("add", ifname="kvt-v0", kind="veth", peer="kvt-v1", mtu=1300)
        ipr.link("set", index=ipr.link_lookup(ifname="kvt-v0")[0], master=links(netns)["br0"].index)
    time.sleep(0.3)  # a repair would have been reported by now
    assert links(netns)["br0"].mtu == 1500
    assert api.get("/v1/bridges/br0").json()["observed_mtu"] == 1500
    assert "bridge.drift_repaired" not in event_types(api, bridge["id"])


def test_taps_without_an_mtu_take_their_bridges(api: TestClient, netns: str) -> None:
    """A 9000 bridge got 1500 taps. A tap without an MTU of its own follows its bridge's,
    also when the bridge's MTU changes later; its own MTU wins."""
    make_bridge(api, mtu=9000)
    follows = make_tap(api, "tap1", bridge="br0")
    own = make_tap(api, "tap2", bridge="br0", mtu=1400)
    kernel = links(netns)
    assert (kernel["br0"].mtu, kernel["tap1"].mtu, kernel["tap2"].mtu) == (9000, 9000, 1400)
    assert (follows["mtu"], follows["observed_mtu"]) == (None, 9000)
    assert own["observed_mtu"] == 1400

    assert api.patch("/v1/bridges/br0?wait=10", json={"mtu": 4000}).status_code == 200
    eventually(lambda: links(netns)["tap1"].mtu == 4000, 2.0, "tap1 following br0")
    kernel = links(netns)
    assert (kernel["br0"].mtu, kernel["tap2"].mtu) == (4000, 1400)
    eventually(
        lambda: api.get("/v1/taps/tap1").json()["observed_mtu"] == 4000, 1.0, "tap1 observed"
    )

    # detached, a tap without an MTU of its own goes back to the kernel's default
    assert api.post("/v1/taps/tap1/detach?wait=10").status_code == 200
    assert links(netns)["tap1"].mtu == 1500


# ---- observed fields follow netlink ---------------------------------------------------------


def test_observed_fields_follow_netlink_without_a_full_pass(api: TestClient, netns: str) -> None:
    bridge = make_bridge(api)
    tap = make_tap(api, "tap1")

    # a tap's MAC is the kernel's (none pinned): set by hand, it is reported at once
    set_link(netns, "tap1", address="02:00:00:00:00:77")
    eventually(
        lambda: api.get("/v1/taps/tap1").json()["observed_mac"] == "02:00:00:00:00:77",
        1.0,
        "the tap's new MAC in the API",
    )
    assert "tap.observed" in event_types(api, tap["id"])

    # the bridge's MTU set by hand: back at once, and the API says what the kernel has
    set_link(netns, "br0", mtu=1400)
    eventually(lambda: links(netns)["br0"].mtu == 1500, 1.0, "the bridge's MTU repaired")
    eventually(
        lambda: "bridge.drift_repaired" in event_types(api, bridge["id"]), 1.0, "drift event"
    )
    assert api.get("/v1/bridges/br0").json()["observed_mtu"] == 1500

    # operational state: a port that comes up brings the bridge up (RFC 2863 ifOperStatus)
    assert api.get("/v1/bridges/br0").json()["observed_oper_state"] != "up"
    with IPRoute(netns=netns) as ipr:
        ipr.link("add", ifname="kvt-v0", kind="veth", peer="kvt-v1")
        v0, v1 = ipr.link_lookup(ifname="kvt-v0")[0], ipr.link_lookup(ifname="kvt-v1")[0]
        ipr.link("set", index=v0, master=links(netns)["br0"].index, state="up")
        ipr.link("set", index=v1, state="up")
    eventually(lambda: _oper(netns, "br0") == "up", 3.0, "br0 up in the kernel")
    eventually(
        lambda: api.get("/v1/bridges/br0").json()["observed_oper_state"] == "up",
        1.0,
        "the bridge's operational state in the API",
    )


def _oper(netns: str, name: str) -> str:
    with IPRoute(netns=netns) as ipr:
        (msg,) = ipr.link("get", index=ipr.link_lookup(ifname=name)[0])
        return str(msg.get_attr("IFLA_OPERSTATE")).lower()


# ---- a VM NIC's MTU ------------------------------------------------------------------------


def test_a_nic_mtu_only_where_it_can_reach_the_guest(api: TestClient) -> None:
    make_bridge(api, mtu=9000)
    body: dict[str, Any] = {"name": "vm1", "power_state": "stopped", "boot": {"kernel": "/k"}}
    for nic, why in (
        ({"backend": "bridge", "bridge": "br0", "model": "e1000", "mtu": 9000}, "host_mtu"),
        ({"backend": "user", "mtu": 9000}, "slirp"),
    ):
        r = api.post("/v1/vms?wait=10", json={**body, "nics": [nic]})
        assert r.status_code == 422, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert why in r.json()["detail"]
    assert api.get("/v1/vms").json()["items"] == []  # nothing half-stored
    r = api.post("/v1/vms?wait=10", json={**body, "nics": [{"backend": "bridge", "bridge": "br0"}]})
    assert r.status_code in (200, 201), r.text
    assert r.json()["nics"][0]["mtu"] is None


def test_a_running_virtio_nic_shows_its_host_mtu(api: TestClient, netns: str) -> None:
    """qemu's own QOM says what the guest is told (GET /devices); the NIC's tap has it too."""
    guest = build_guest("virtio")
    make_bridge(api, mtu=9000)
    boot = {
        "kernel": str(guest.kernel),
        "initrd": str(guest.initrd),
        "cmdline": kernel_cmdline(dhcp=True),
    }
    nics = [
        {"backend": "bridge", "bridge": "br0", "mtu": 4000},
        {"backend": "bridge", "bridge": "br0", "model": "e1000"},
    ]
    r = api.post(
        "/v1/vms?wait=30", json={"name": "vm1", "memory_mib": 128, "boot": boot, "nics": nics}
    )
    assert r.status_code == 201, r.text
    vm = r.json()
    try:
        assert vm["status"] == "running", vm
        devices = api.get(f"/v1/vms/{vm['id']}/devices").json()
        assert [(d["type"], d["mtu"]) for d in devices] == [
            ("virtio-net-pci", 4000),
            ("e1000", None),
        ]
        kernel = links(netns)
        assert [kernel[n["tap_name"]].mtu for n in vm["nics"]] == [4000, 9000]
    finally:
        assert api.post(f"/v1/vms/{vm['id']}/kill?wait=30").status_code == 200
        assert api.delete(f"/v1/vms/{vm['id']}?wait=30").status_code == 204
