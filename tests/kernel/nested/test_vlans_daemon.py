"""VLANs realized by the daemon (app.supervisor.vlans, the 802.1Q link driver) on a kernel that
has 802.1Q and bridge VLAN filtering (Debian's own, booted by the kernel test tier), through
the in-process app: both backends on trunks with an uplink, kernel objects and membership read
back through netlink, drift repair, refusal to mix backends, a restart that re-creates the
objects in dependency order, and deletes that leave nothing.

Topology: the daemon's namespace (`netns`) has two uplinks, eth0 and eth1, veth pairs whose far
ends lan0 and lan1 are in namespace `lan`, each with an 802.1Q sub-interface for VLAN 10 and
an address on it (what a switch port trunking VLAN 10 looks like). br0 (eth0) carries its VLAN
by filtering, br1 (eth1) with a bridge per VLAN. One test, to share the one costly setup.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.host.vlans import VlanOps
from app.main import create_app
from app.settings import Settings
from tests.netns_tools import ip, links, throwaway_netns

_TIER_PLUGIN = Path(__file__).resolve().parents[1] / "conftest.py"
if os.environ.get("KVT_NESTED") != "1" and not _TIER_PLUGIN.is_file():
    pytest.skip(
        "runs only inside the nested Debian kernel of the kernel test tier (tests/kernel)",
        allow_module_level=True,
    )


@pytest.fixture
def lan(netns: str, modules: Callable[..., None]) -> Iterator[str]:
    modules("8021q", "bridge", "veth")
    with throwaway_netns() as lan_ns:
        for n, (nic, far) in enumerate((("eth0", "lan0"), ("eth1", "lan1"))):
            ip(netns, "link", "add", nic, "type", "veth", "peer", "name", far, "netns", lan_ns)
            ip(lan_ns, "addr", "add", f"10.6{n}.0.1/24", "dev", far)
            ip(lan_ns, "link", "set", far, "up")
            ip(lan_ns, "link", "add", "link", far, "name", f"{far}.10", "type", "vlan", "id", "10")
            ip(lan_ns, "addr", "add", f"10.1{n}.0.1/24", "dev", f"{far}.10")
            ip(lan_ns, "link", "set", f"{far}.10", "up")
            ip(netns, "addr", "add", f"10.6{n}.0.10/24", "dev", nic)
            ip(netns, "link", "set", nic, "up")
        yield lan_ns


def until(check: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or check}")
        time.sleep(0.2)


def memberships(netns: str, bridge: str) -> dict[str, dict[int, tuple[bool, bool]]]:
    with VlanOps(netns=netns) as ops:
        return {
            port: {vid: (m.pvid, m.untagged) for vid, m in members.items()}
            for port, members in ops.memberships(bridge).items()
        }


def ok(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    return r.json()  # type: ignore[no-any-return]


@contextlib.contextmanager
def daemon_app(netns: str, settings: Settings) -> Iterator[TestClient]:
    """The app in this process acting on `netns` (as tests/conftest.py's `api`); leaving the
    block stops it (supervisor included), and a second one restarts on the same state."""
    app = create_app(settings, token="test-token", host_netns=netns)
    with TestClient(app, base_url="http://kvmnetd") as client:
        assert app.state.supervisor.ready.wait(60)
        yield client


def test_vlans_on_both_backends_converge_repair_restart_and_go(
    netns: str, lan: str, settings: Settings
) -> None:
    with daemon_app(netns, settings) as api:
        a, b, mac = _first_run(api, netns)
    # -- restart: the objects removed while the daemon is down come back, the bridge first
    # (the sub-interface is its port), with the same MAC; the membership too
    ip(netns, "link", "del", "eth1.10")
    ip(netns, "link", "del", "br1v10")
    with VlanOps(netns=netns) as ops:
        ops.vlan_del("br0", "eth0", 10)
    with daemon_app(netns, settings) as api:
        kernel = links(netns)
        assert kernel["eth1.10"].master == "br1v10" and kernel["br1v10"].mac == mac
        assert 10 in memberships(netns, "br0")["eth0"]
        for vlan in (a, b):
            shown = ok(api.get(f"/v1/vlans/{vlan['id']}"), 200)
            assert shown["status"] == "active", shown
        # -- delete leaves nothing: links, membership, rows, name claims
        assert api.delete("/v1/vlans/ten-b?wait=30").status_code == 204
        assert api.delete("/v1/vlans/ten-a?wait=30").status_code == 204
        kernel = links(netns)
        assert "eth1.10" not in kernel and "br1v10" not in kernel
        assert memberships(netns, "br0")["eth0"] == {1: (True, True)}
        assert ok(api.get("/v1/vlans"), 200)["items"] == []
        for name in ("br1v10", "eth1.10"):  # the claims went with the row
            assert ok(api.post("/v1/bridges", json={"name": name}), 202)["name"] == name


def _first_run(api: TestClient, netns: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    for n in (0, 1):
        ok(api.post("/v1/bridges?wait=20", json={"name": f"br{n}"}), 201)
        r = api.put(
            f"/v1/bridges/br{n}/uplink?wait=30",
            json={"interface": f"eth{n}", "probe_address": f"10.6{n}.0.1"},
        )
        assert ok(r, 200 if r.status_code == 200 else 201)["status"] == "active", r.text

    # -- vlan_filtering on br0: the trunk filters, the uplink carries VID 10 tagged
    a = ok(
        api.post("/v1/vlans?wait=30", json={"name": "ten-a", "vlan_id": 10, "trunk": "br0"}), 201
    )
    assert (a["backend"], a["status"], a["observed_generation"]) == ("vlan_filtering", "active", 1)
    with VlanOps(netns=netns) as ops:
        assert ops.bridge_vlan_options("br0").filtering is True
    ports = memberships(netns, "br0")
    assert ports["eth0"] == {1: (True, True), 10: (False, False)}  # native 1, VID 10 tagged
    assert ports["br0"] == {1: (True, True)}  # the host: no address on VLAN 10 (yet)
    assert [(o["name"], o["observed_state"]) for o in a["kernel_objects"]] == [("eth0", "present")]
    view = ok(api.get("/v1/bridges/br0/vlans"), 200)
    assert view["filtering_available"] is True and view["vlan_filtering"] is True
    rows = {(p["port"], p["vid"]): p for p in view["ports"]}
    assert rows[("eth0", 10)]["ours"] and rows[("eth0", 10)]["planned"]
    assert not rows[("eth0", 10)]["pvid"] and not rows[("eth0", 10)]["untagged"]

    # -- bridge_per_vlan on br1: eth1.10 in its own bridge br1v10, stacked on eth1
    b_body = {"name": "ten-b", "vlan_id": 10, "trunk": "br1", "backend": "bridge_per_vlan"}
    b = ok(api.post("/v1/vlans?wait=30", json=b_body), 201)
    assert (b["backend"], b["status"]) == ("bridge_per_vlan", "active"), b
    kernel = links(netns)
    sub, vbr = kernel["eth1.10"], kernel["br1v10"]
    assert sub.kind == "vlan" and sub.info.get("IFLA_VLAN_ID") == 10
    assert sub.master == "br1v10" and sub.alias == f"kvmnetd:vlan:{b['id']}"
    assert vbr.kind == "bridge" and vbr.alias == f"kvmnetd:bridge:{b['id']}"
    mac = str(vbr.mac)
    shown = {o["name"]: o for o in b["kernel_objects"]}
    assert shown["eth1.10"]["ifindex"] == sub.index and shown["br1v10"]["ifindex"] == vbr.index

    # both names are the VLAN's: no bridge may take them
    for name in ("br1v10", "eth1.10"):
        r = api.post("/v1/bridges", json={"name": name})
        assert r.status_code == 409 and "name-taken" in r.json()["type"], r.text

    # mixing backends on one trunk is refused
    r = api.post("/v1/vlans", json={**b_body, "name": "mix", "vlan_id": 20, "trunk": "br0"})
    assert r.status_code == 409 and "cannot mix backends" in r.json()["detail"], r.text

    # -- drift: the sub-interface deleted by hand comes back (netlink tells the supervisor)
    ip(netns, "link", "del", "eth1.10")
    back = until(lambda: links(netns).get("eth1.10"), what="eth1.10 back")
    assert back.master == "br1v10" and back.info.get("IFLA_VLAN_ID") == 10

    # the uplink's VLAN membership removed by hand comes back at the next full pass (the
    # repair of eth1.10 may still be programming br0 when the hand removal lands: remove it
    # until the removal is seen, so that what follows is the daemon's doing)
    def removed_by_hand() -> bool:
        with VlanOps(netns=netns) as ops:
            ops.vlan_del("br0", "eth0", 10)
        return 10 not in memberships(netns, "br0")["eth0"]

    until(removed_by_hand, what="VID 10 removed from eth0 by hand")
    api.app.state.supervisor.resync()  # type: ignore[attr-defined]
    until(lambda: 10 in memberships(netns, "br0")["eth0"], what="VID 10 back on eth0")

    return a, b, mac
