"""A port held off its master goes back on it the moment the master is usable again, not at
the next full pass (app.supervisor.loop: the pass that makes a master usable wakes its held
ports), on this machine's kernel with a plain bridge.

The full resync is pushed out to an hour, so only the wake-up can explain the tap's return.
The bridge is made unusable the way an admin would: deleted by hand and its name taken by a
foreign bridge (the daemon never touches it: the bridge row is in error, its tap is blocked
and in error too). Once the foreign bridge goes, netlink wakes a pass that re-creates ours.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.api.test_networks_api import make_stopped_vm
from tests.api.test_vlans_api import VlanKernelInspector
from tests.netns_tools import ip, links

PROMPT = 5.0  # s: far below the full resync (an hour), far above a netlink round trip


@pytest.fixture
def quiet_api(netns: str, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        state_dir=tmp_path / "state",
        run_dir=tmp_path / "run",
        listen="",
        reconcile_interval=3600,
        probe_kernel=tmp_path / "no-kernel",
    )
    app = create_app(settings, token="test-token", host_netns=netns)
    with TestClient(app, base_url="http://kvmnetd") as client:
        assert app.state.supervisor.ready.wait(10)
        yield client


def until(probe: Callable[[], Any], timeout: float = PROMPT, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        answer = probe()
        if answer:
            return answer
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def replace_with_foreign_bridge(
    netns: str, name: str, scratch: Path, api: TestClient | None = None
) -> None:
    """Our bridge deleted and a foreign one of the same name made right after (one `ip
    -batch`). On an idle machine the supervisor, woken by netlink, can re-create ours between
    the two commands; with `api` the batch runs while the test holds the database's write
    lock, which the supervisor takes (its create journal) before it creates a link."""
    batch = scratch / "replace.batch"
    batch.write_text(f"link del {name}\nlink add {name} type bridge\n")
    lock = (
        contextlib.nullcontext() if api is None else api.app.state.context.db._write_lock  # type: ignore[attr-defined]
    )
    for _ in range(5):
        try:
            with lock:
                ip(netns, "-batch", str(batch))
        except subprocess.CalledProcessError:
            time.sleep(0.5)
            continue
        if links(netns)[name].alias is None:
            return
    raise AssertionError(f"could not replace {name} by a foreign bridge")


def test_tap_returns_to_its_bridge_as_soon_as_the_bridge_is_back(
    quiet_api: TestClient, netns: str, tmp_path: Path
) -> None:
    api = quiet_api
    supervisor = api.app.state.supervisor  # type: ignore[attr-defined]
    r = api.post("/v1/bridges?wait=10", json={"name": "br0"})
    assert r.status_code == 201, r.text
    r = api.post("/v1/taps?wait=10", json={"name": "tap1", "bridge": "br0"})
    assert r.status_code == 201 and r.json()["status"] == "active", r.text
    vm = make_stopped_vm(api, "web")  # a VM with a NIC on br0: the VM worker is told too
    told: list[set[str]] = []
    supervisor.on_ports_held(told.append)

    replace_with_foreign_bridge(netns, "br0", tmp_path, api)
    bridge = until(
        lambda: (b := api.get("/v1/bridges/br0").json())["status"] == "error" and b,
        what="br0 in error (its name is held by a foreign link)",
    )
    assert "not managed by kvmnetd" in bridge["status_reason"], bridge
    tap = until(
        lambda: (t := api.get("/v1/taps/tap1").json())["status"] == "error" and t,
        what="tap1 in error (its bridge cannot be set up)",
    )
    assert "br0" in tap["status_reason"], tap  # blocked by it, or refused as its master
    assert links(netns)["tap1"].master is None  # never on the foreign bridge
    # the master stays broken: nothing wakes, no pass runs (no hot loop)
    passes = supervisor.passes
    time.sleep(1.0)
    assert supervisor.passes == passes

    ip(netns, "link", "del", "br0")  # the admin removes the foreign bridge
    started = time.monotonic()
    until(lambda: (k := links(netns).get("br0")) and k.alias, what="br0 re-created")
    until(lambda: links(netns)["tap1"].master == "br0", what="tap1 back on br0")
    back = time.monotonic() - started
    print(f"tap1 back on br0 {back:.2f} s after the foreign br0 went")
    tap = until(
        lambda: (t := api.get("/v1/taps/tap1").json())["status"] == "active" and t,
        what="tap1 active",
    )
    assert tap["status_reason"] is None
    assert api.get("/v1/bridges/br0").json()["status"] == "active"
    assert {vm["id"]} in told, told  # app.main hands these to VmWorker.recheck_taps
    # ... and the wake-up wakes nothing more: the passes stop
    until(lambda: quiet_for(supervisor, 0.5), what="no more passes")


def quiet_for(supervisor: Any, seconds: float) -> bool:
    passes = supervisor.passes
    time.sleep(seconds)
    return bool(supervisor.passes == passes)


def test_tap_returns_to_its_vlan_as_soon_as_the_vlan_is_back(
    quiet_api: TestClient, netns: str, tmp_path: Path
) -> None:
    """The same through a VLAN (bridge_per_vlan, which this kernel can do without an
    uplink: the VLAN's own bridge br0v10 is its ports' master). The VLAN's bridge replaced
    by a foreign one puts the VLAN in error and blocks its tap; the VLAN's repair (its
    pass, app.supervisor.vlans) is what wakes the tap."""
    api = quiet_api
    ctx = api.app.state.context  # type: ignore[attr-defined]
    real = ctx.inspector
    ctx.inspector = VlanKernelInspector(
        netns=netns, qemu_binary="kvt-no-qemu", run_dir=tmp_path / "vlan-probe"
    )
    try:
        r = api.post("/v1/bridges?wait=10", json={"name": "br0"})
        assert r.status_code == 201, r.text
        body = {"name": "ten", "vlan_id": 10, "trunk": "br0", "backend": "bridge_per_vlan"}
        r = api.post("/v1/vlans?wait=10", json=body)
        assert r.status_code == 201 and r.json()["status"] == "active", r.text
    finally:
        ctx.inspector.close()
        ctx.inspector = real
    r = api.post("/v1/taps?wait=10", json={"name": "tap1", "vlan": "ten"})
    assert r.status_code == 201 and r.json()["status"] == "active", r.text
    assert links(netns)["tap1"].master == "br0v10"

    replace_with_foreign_bridge(netns, "br0v10", tmp_path, api)
    # a pass that read the links before the batch may still try to create it (EEXIST, said
    # as such); the next one finds the foreign bridge
    vlan = until(
        lambda: (
            "not managed by kvmnetd"
            in ((v := api.get("/v1/vlans/ten").json())["status_reason"] or "")
            and v
        ),
        what="VLAN ten in error (its bridge's name is held by a foreign link)",
    )
    assert vlan["status"] == "error", vlan
    tap = until(
        lambda: (t := api.get("/v1/taps/tap1").json())["status"] == "error" and t,
        what="tap1 in error (its VLAN's bridge cannot be set up)",
    )
    assert "br0v10" in tap["status_reason"], tap
    assert links(netns)["tap1"].master is None  # never on the foreign bridge
    until(lambda: quiet_for(api.app.state.supervisor, 1.0), what="no hot loop")  # type: ignore[attr-defined]

    ip(netns, "link", "del", "br0v10")  # the admin removes the foreign bridge
    started = time.monotonic()
    until(
        lambda: links(netns).get("tap1", None) and links(netns)["tap1"].master == "br0v10",
        what="tap1 back on br0v10",
    )
    print(f"tap1 back on br0v10 {time.monotonic() - started:.2f} s after the foreign one went")
    assert (k := links(netns)["br0v10"]).alias == f"kvmnetd:bridge:{vlan['id']}", k
    until(lambda: api.get("/v1/vlans/ten").json()["status"] == "active", what="ten active")
    until(lambda: api.get("/v1/taps/tap1").json()["status"] == "active", what="tap1 active")
