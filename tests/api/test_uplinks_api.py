"""A bridge's uplink through the API (in-process app), on the real kernel: a "LAN" namespace
with the gateway, joined by a veth whose other end plays the host's eth0 in the daemon's
namespace. No guest boots here (tests/e2e/test_uplink.py does that)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import icmplib
import pytest
from fastapi.testclient import TestClient
from pyroute2 import IPRoute

from app.domain.uplinks import NicConfig
from app.host.uplink import link_facts, snapshot
from app.settings import Settings
from tests.api.test_l2_api import eventually
from tests.api.test_links_api import make_bridge
from tests.netns_tools import in_namespace, ip, links, throwaway_netns

GATEWAY = "10.60.0.1"
HOST = "10.60.0.10"


@pytest.fixture
def lan(netns: str) -> Iterator[str]:
    """The LAN namespace; the daemon's namespace (`netns`) gets eth0 10.60.0.10/24 with the
    default route via the LAN's 10.60.0.1 (metric 100) and a static route (metric 7)."""
    with throwaway_netns() as lan_ns:
        ip(netns, "link", "add", "eth0", "type", "veth", "peer", "name", "lan0", "netns", lan_ns)
        ip(lan_ns, "addr", "add", f"{GATEWAY}/24", "dev", "lan0")
        ip(lan_ns, "link", "set", "lan0", "up")
        ip(netns, "addr", "add", f"{HOST}/24", "dev", "eth0")
        ip(netns, "addr", "add", "fd00:60::10/64", "dev", "eth0", "nodad")
        ip(netns, "link", "set", "eth0", "up")
        ip(netns, "route", "add", "fd00:99::/64", "via", "fd00:60::1", "metric", "50")
        ip(netns, "route", "add", "default", "via", GATEWAY, "metric", "100")
        ip(netns, "route", "add", "172.16.5.0/24", "via", GATEWAY, "metric", "7")
        yield lan_ns


def read(ns: str, name: str) -> tuple[object, ...]:
    """A link's configuration as netlink reports it (MAC, master, addresses, routes), minus
    lifetimes that count down."""

    def run() -> tuple[object, ...]:
        with IPRoute() as ipr:
            config: NicConfig = snapshot(ipr, name)
            facts = link_facts(ipr, name)
        assert facts is not None
        return (
            config.mac,
            facts.master,
            sorted((a.essence() for a in config.addresses), key=repr),
            sorted((r.essence() for r in config.routes), key=repr),
        )

    return in_namespace(ns, run)


def reaches(ns: str, address: str) -> bool:
    """An ICMP echo from inside `ns` is answered."""
    return in_namespace(
        ns,
        lambda: bool(
            icmplib.ping(address, count=2, interval=0.2, timeout=1, privileged=True).is_alive
        ),
    )


def uplink(api: TestClient, **body: Any) -> Any:
    return api.put("/v1/bridges/br0/uplink?wait=20", json={"interface": "eth0", **body})


def test_dry_run_attach_detach_and_rollback(api: TestClient, netns: str, lan: str) -> None:
    make_bridge(api, stp=False, forward_delay=0)
    before = read(netns, "eth0")
    bridge_before = read(netns, "br0")

    r = api.put("/v1/bridges/br0/uplink?dry_run=true", json={"interface": "eth0"})
    assert r.status_code == 200, r.text
    plan = r.json()
    assert plan["refused"] is None and plan["probe_address"] == GATEWAY
    assert plan["addresses"] == [f"{HOST}/24", "fd00:60::10/64"]
    assert plan["steps"][-1] == f"probe {GATEWAY} through br0"
    assert read(netns, "eth0") == before  # a dry run changes nothing
    assert api.get("/v1/bridges/br0/uplink").status_code == 404

    r = uplink(api)
    assert r.status_code == 201, r.text
    attached = r.json()
    assert (attached["status"], attached["phase"]) == ("active", "attached"), attached
    assert attached["carrier"] is True and attached["present_as"] == "eth0"
    assert any(s.startswith("enslave eth0 to br0") for s in attached["steps"])
    bridge = read(netns, "br0")
    assert bridge[0] == before[0]  # the bridge took the NIC's MAC
    assert sorted(a[1] for a in bridge[2]) == [f"{HOST}/24", "fd00:60::10/64"]
    assert {(r[1], r[5]) for r in bridge[3] if r[4] is not None} >= {
        (None, GATEWAY),
        ("fd00:99::", "fd00:60::1"),
    }
    assert read(netns, "eth0")[2:] == ([], [])
    assert reaches(lan, HOST) and reaches(netns, GATEWAY)
    shown = api.get("/v1/bridges/br0").json()
    assert [p["name"] for p in shown["ports"]] == ["eth0"]
    assert shown["uplink"] == {"interface": "eth0", "phase": "attached", "status": "active"}
    checks = {c["name"]: c for c in api.get("/v1/host/diagnostics").json()}
    assert checks["uplink br0"]["ok"] is True, checks["uplink br0"]
    ip(lan, "link", "set", "lan0", "down")  # the LAN's side unplugged: no carrier
    check = {c["name"]: c for c in api.get("/v1/host/diagnostics").json()}["uplink br0"]
    assert (check["ok"], check["severity"]) == (False, "warning") and "carrier" in check["detail"]
    ip(lan, "link", "set", "lan0", "up")

    # a full resync leaves the moved addresses alone (they are part of the bridge now)
    api.app.state.supervisor.resync()  # type: ignore[attr-defined]
    assert reaches(lan, HOST)

    r = api.delete("/v1/bridges/br0/uplink?dry_run=true")
    assert r.status_code == 200 and r.json()["action"] == "detach", r.text
    assert api.delete("/v1/bridges/br0/uplink?wait=20").status_code == 204
    assert read(netns, "eth0") == before  # back, bit for bit
    assert read(netns, "br0")[2:] == bridge_before[2:]
    assert reaches(lan, HOST)

    # an unreachable probe address: everything rolled back, the reason reported
    r = uplink(api, probe_address="10.60.0.99", probe_timeout=1)
    assert r.status_code == 201 or r.status_code == 200, r.text
    failed = r.json()
    assert failed["status"] == "error" and "rolled back" in failed["status_reason"], failed
    assert failed["phase"] == "detached"
    assert read(netns, "eth0") == before
    plan = api.delete("/v1/bridges/br0/uplink?dry_run=true").json()
    assert plan["steps"] == [] and "not attached" in plan["refused"], plan
    assert read(netns, "br0")[2:] == bridge_before[2:]


def test_a_leased_address_is_refused_unless_moved_on_purpose(
    api: TestClient, netns: str, lan: str
) -> None:
    make_bridge(api)
    ip(
        netns,
        "addr",
        "add",
        "10.60.0.20/24",
        "dev",
        "eth0",
        "valid_lft",
        "600",
        "preferred_lft",
        "600",
    )
    before = read(netns, "eth0")
    r = uplink(api)
    assert r.json()["status"] == "error", r.text
    assert "dhcp=move" in r.json()["status_reason"] and "10.60.0.20/24" in r.json()["status_reason"]
    assert read(netns, "eth0") == before
    r = uplink(api, dhcp="move")
    assert r.json()["status"] == "active", r.text
    moved = {a.cidr: a for a in _addresses(netns, "br0")}
    assert 0 < moved["10.60.0.20/24"].valid <= 600  # moved with its remaining lifetime


def test_deleting_the_bridge_moves_the_configuration_back_first(
    api: TestClient, netns: str, lan: str, settings: Settings
) -> None:
    make_bridge(api)
    before = read(netns, "eth0")
    assert uplink(api).json()["status"] == "active"
    r = api.delete("/v1/bridges/br0?wait=20")  # the uplink depends on it
    assert r.status_code == 409 and r.json()["dependents"][0]["kind"] == "uplink", r.text
    assert api.delete("/v1/bridges/br0?wait=20&force=true").status_code == 204
    assert read(netns, "eth0")[:1] + read(netns, "eth0")[2:] == before[:1] + before[2:]
    assert reaches(lan, HOST)


def _addresses(ns: str, name: str) -> Any:
    def run() -> Any:
        with IPRoute() as ipr:
            return snapshot(ipr, name).addresses

    return in_namespace(ns, run)


def test_unknown_interface_and_our_own_links_are_refused(api: TestClient, netns: str) -> None:
    make_bridge(api)
    make_bridge(api, "br1")
    r = api.put("/v1/bridges/br0/uplink", json={"interface": "br1"})
    assert r.status_code == 409 and "link of kvmnetd" in r.json()["detail"], r.text
    r = api.put("/v1/bridges/br0/uplink?dry_run=true", json={"interface": "nope0"})
    assert r.status_code == 200 and "no interface" in r.json()["refused"], r.text
    r = api.put("/v1/bridges/br0/uplink?dry_run=true", json={"interface": "lo"})
    assert "loopback" in r.json()["refused"], r.text
    ip(netns, "link", "add", "other", "type", "bridge")  # not ours, but a bridge all the same
    r = api.put("/v1/bridges/br0/uplink?wait=10", json={"interface": "other"})
    assert r.json()["status"] == "error" and "a bridge" in r.json()["status_reason"], r.text
    r = api.put("/v1/bridges/br0/uplink", json={"interface": "eth0", "probe_address": "x"})
    assert r.status_code == 422, r.text


def test_a_renamed_nic_is_found_by_its_mac(api: TestClient, netns: str, lan: str) -> None:
    make_bridge(api)
    before = read(netns, "eth0")
    assert uplink(api).json()["status"] == "active"
    ip(netns, "link", "set", "eth0", "down")
    ip(netns, "link", "set", "eth0", "name", "wan0")
    ip(netns, "link", "set", "wan0", "up")
    assert api.get("/v1/bridges/br0/uplink").json()["present_as"] == "wan0"
    assert api.delete("/v1/bridges/br0/uplink?wait=20").status_code == 204
    assert read(netns, "wan0")[2:] == before[2:]  # the configuration went back to the NIC
    assert reaches(lan, HOST)


def test_a_bridge_takes_its_uplinks_mtu_and_mac_while_attached_and_its_own_after(
    api: TestClient, netns: str, lan: str
) -> None:
    """A bridge without an MTU of its own keeps 1500 whatever joins, except while an uplink
    is attached: then the host's traffic leaves through the NIC, so the bridge (and its taps
    without an MTU of their own) take the NIC's MTU, as they take its MAC. Detached, the
    bridge is back at its own MTU and its generated MAC."""
    ip(lan, "link", "set", "lan0", "mtu", "9000")
    ip(netns, "link", "set", "eth0", "mtu", "9000")
    eth0_mac = read(netns, "eth0")[0]
    bridge = make_bridge(api, stp=False, forward_delay=0)
    r = api.post("/v1/taps?wait=10", json={"name": "tap1", "bridge": "br0"})
    assert r.status_code == 201, r.text
    assert (links(netns)["br0"].mtu, links(netns)["tap1"].mtu) == (1500, 1500)

    r = uplink(api)
    assert r.status_code == 201, r.text
    eventually(lambda: links(netns)["tap1"].mtu == 9000, 2.0, "tap1 at the uplink's MTU")
    kernel = links(netns)
    assert (kernel["br0"].mtu, kernel["br0"].mac) == (9000, eth0_mac)
    assert reaches(netns, GATEWAY)

    assert api.delete("/v1/bridges/br0/uplink?wait=20").status_code == 204
    eventually(lambda: links(netns)["tap1"].mtu == 1500, 2.0, "tap1 back at 1500")
    kernel = links(netns)
    assert (kernel["br0"].mtu, kernel["br0"].mac) == (1500, bridge["generated_mac"])
    assert kernel["eth0"].master is None and reaches(netns, GATEWAY)
