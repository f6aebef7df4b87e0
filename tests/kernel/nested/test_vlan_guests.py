"""Taps on VLANs as the daemon plans them, proven by frames on a kernel that filters VLANs
(the kernel test tier): three tap resources stored through the services (two on VLAN 10, one
on VLAN 20 of trunk br0, backend vlan_filtering), each put on the master the link planner
names (load_link_specs) with the membership tap_port_vlans plans, applied with
app.host.vlans; a "guest" on each tap is a frame responder holding the tap (ARP, ICMP echo).
A namespace on VLAN 10 reaches both VLAN 10 guests and not the VLAN 20 one, which a
namespace on VLAN 20 reaches. The VLAN's own kernel objects are vlanlinks' part; here the
test turns filtering on itself.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from app.db.migrate import upgrade
from app.db.repositories import load_link_specs, tap_port_vlans
from app.db.session import Database
from app.domain.vlan_ports import Membership, access_port, plan_bridge
from app.domain.vlans import VlanFacts
from app.host.vlans import VlanOps
from app.schemas.links import BridgeCreate, TapCreate
from app.schemas.vlans import VlanCreate
from app.services.links import BridgeService, TapService
from app.services.vlans import VlanService
from tests.kernel.nested.conftest import ModuleLoader
from tests.netns_tools import throwaway_netns

_TIER_PLUGIN = Path(__file__).resolve().parents[1] / "conftest.py"
if os.environ.get("KVT_NESTED") != "1" and not _TIER_PLUGIN.is_file():
    pytest.skip(
        "runs only inside the nested Debian kernel of the kernel test tier (tests/kernel)",
        allow_module_level=True,
    )

RESPONDER = Path(__file__).with_name("frame_responder.py")
GUESTS = {
    "ga": ("tenant-a", "10.0.0.1"),
    "gb": ("tenant-a", "10.0.0.2"),
    "gc": ("tenant-b", "10.0.0.3"),
}


def planned(tmp_path: Path) -> tuple[dict[str, str | None], dict[str, dict[int, Membership]]]:
    """Store br0, VLANs 10 and 20 on it and the three taps; the masters and membership
    the daemon plans for them."""
    db = Database(f"sqlite:///{tmp_path / 'k.db'}")
    upgrade(db.url)
    try:
        with db.unit_of_work() as s:
            BridgeService(s).create(BridgeCreate.model_validate({"name": "br0"}))
            for name, vid in (("tenant-a", 10), ("tenant-b", 20)):
                body = {"name": name, "vlan_id": vid, "trunk": "br0", "backend": "vlan_filtering"}
                VlanService(s).create(VlanCreate.model_validate(body), VlanFacts({}))
            for tap, (vlan, _) in GUESTS.items():
                TapService(s).create(TapCreate.model_validate({"name": tap, "vlan": vlan}))
        with db.reading() as s:
            specs = load_link_specs(s).specs
            trunk = next(spec.id for spec in specs if spec.name == "br0")
            return {spec.name: spec.master for spec in specs}, tap_port_vlans(s, trunk)
    finally:
        db.dispose()


def _index(ipr: IPRoute, name: str) -> int:
    return int(ipr.link_lookup(ifname=name)[0])


def pings(ns: str, address: str, tries: int = 3) -> bool:
    for _ in range(tries):
        done = subprocess.run(
            ["ip", "netns", "exec", ns, "busybox", "ping", "-c", "1", "-W", "2", address],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
            check=False,
        )
        if done.returncode == 0:
            return True
    return False


@contextlib.contextmanager
def responders(sw: str) -> Iterator[None]:
    """One frame responder per guest tap, in namespace `sw`; each killed (by pid) after."""
    procs: list[subprocess.Popen[str]] = []
    try:
        for n, (tap, (_, ip)) in enumerate(GUESTS.items(), start=1):
            argv = ["ip", "netns", "exec", sw, sys.executable, str(RESPONDER), tap]
            proc = subprocess.Popen(
                [*argv, f"02:00:00:00:00:0{n}", ip],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                text=True,
            )
            procs.append(proc)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=30)
            if proc.stdout is not None:
                proc.stdout.close()


def test_guests_on_vlan_10_reach_each_other_not_vlan_20(
    tmp_path: Path, modules: ModuleLoader
) -> None:
    modules("bridge", "tun", "veth")
    masters, membership = planned(tmp_path)
    assert {tap: masters[tap] for tap in GUESTS} == dict.fromkeys(GUESTS, "br0")
    assert membership == {
        "ga": access_port(10),
        "gb": access_port(10),
        "gc": access_port(20),
    }
    with throwaway_netns() as sw, throwaway_netns() as p10, throwaway_netns() as p20:
        with IPRoute(netns=sw) as ipr:
            ipr.link("add", ifname="br0", kind="bridge", br_stp_state=0, br_vlan_filtering=1)
            ipr.link("set", index=_index(ipr, "br0"), state="up")
            for tap in GUESTS:
                ipr.link("add", ifname=tap, kind="tuntap", mode="tap")
                master = masters[tap]
                assert master is not None
                ipr.link("set", index=_index(ipr, tap), master=_index(ipr, master), state="up")
            for ns, port, address in ((p10, "p10", "10.0.0.10"), (p20, "p20", "10.0.0.20")):
                ipr.link("add", ifname=port, kind="veth", peer={"ifname": "eth0", "net_ns_fd": ns})
                ipr.link("set", index=_index(ipr, port), master=_index(ipr, "br0"), state="up")
                with IPRoute(netns=ns) as inner:
                    index = _index(inner, "eth0")
                    inner.addr("add", index=index, address=address, prefixlen=24)
                    inner.link("set", index=index, state="up")
        desired = {**membership, "p10": access_port(10), "p20": access_port(20)}
        with VlanOps(netns=sw) as ops:
            ops.apply("br0", plan_bridge("br0", desired, ops.memberships("br0")))
            assert {port: ops.memberships("br0")[port] for port in desired} == desired
        with responders(sw):
            assert pings(p10, "10.0.0.1") and pings(p10, "10.0.0.2")
            assert not pings(p10, "10.0.0.3", tries=1)  # VLAN 20: not reachable from VLAN 10
            assert pings(p20, "10.0.0.3")
            assert not pings(p20, "10.0.0.1", tries=1)
