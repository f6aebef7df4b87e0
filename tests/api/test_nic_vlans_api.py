"""VM NICs and taps on a VLAN, trunk NICs, and a VLAN in use (issue 10, user item 2), on the
real kernel of a fresh namespace.

As in tests/api/test_vlans_api.py, the only thing injected is the capability probe's
answer that the kernel has 802.1Q and VLAN filtering (this one has neither), so VLANs can
be stored; everything else is the real app. VMs never boot (a kernel that does not exist).
Where a tap goes (its master) and which VLANs each port should carry are read back from the
repositories the workers use (load_link_specs, tap_port_vlans) and, for a VLAN-filtering
trunk, from the kernel: the tap's master is the trunk itself.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api.deps import AppContext
from app.db.repositories import load_link_specs, tap_port_vlans
from app.db.session import Database
from app.domain.vlan_ports import Membership
from app.settings import Settings
from tests.api.test_vlans_api import VlanKernelInspector, make_bridge, problem
from tests.netns_tools import links


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """No full resync during a test (filtering_as_if_active: the rows stand for a kernel
    that filters VLANs until the next one)."""
    return settings.model_copy(update={"reconcile_interval": 3600.0})


def filtering_as_if_active(settings: Settings, *vlan_ids: str) -> None:
    """This kernel cannot filter VLANs: the supervisor puts a vlan_filtering VLAN in `error`
    at its first try, and nothing joins a VLAN in error (409). These service-level tests
    stand for a kernel that filters: once the supervisor has tried, the rows say what it
    would have written there (active, settled), as the injected probe says what it would
    answer. The next full pass would try again: `settings` puts it after the test."""
    marks = ",".join("?" * len(vlan_ids))
    deadline = time.monotonic() + 10
    with sqlite3.connect(settings.state_dir / "kvmnetd.db") as conn:
        query = f"SELECT count(*) FROM vlans WHERE status = 'error' AND id IN ({marks})"
        while conn.execute(query, vlan_ids).fetchone() != (len(vlan_ids),):
            assert time.monotonic() < deadline, "the supervisor never tried the VLANs"
            time.sleep(0.05)
        conn.execute(
            "UPDATE vlans SET status = 'active', status_reason = NULL, "
            f"observed_generation = generation WHERE id IN ({marks})",
            vlan_ids,
        )


@pytest.fixture
def vapi(api: TestClient, netns: str, settings: Settings) -> Iterator[TestClient]:
    """The app, whose probe says the kernel has 802.1Q and VLAN filtering (qemu probed as
    usual, so VMs can be created)."""
    ctx: AppContext = api.app.state.context  # type: ignore[attr-defined]
    real = ctx.inspector
    injected = VlanKernelInspector(
        netns=netns,
        qemu_binary=settings.qemu_binary,
        probe_kernel=settings.probe_kernel_path,
        run_dir=settings.run_dir,
        state_dir=settings.state_dir,
    )
    ctx.inspector = injected
    try:
        yield api
    finally:
        ctx.inspector = real
        injected.close()


def vlan(api: TestClient, name: str, vid: int, trunk: str, backend: str = "auto") -> str:
    body = {"name": name, "vlan_id": vid, "trunk": trunk, "backend": backend}
    r = api.post("/v1/vlans", json=body)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def vm(api: TestClient, name: str, *nics: dict[str, Any], running: bool = False) -> Any:
    body = {
        "name": name,
        "power_state": "running" if running else "stopped",
        "boot": {"kernel": "/nonexistent"},  # never boots
        "nics": [{"backend": "bridge", **nic} for nic in nics],
    }
    return api.post("/v1/vms", json=body)


def created(r: Any) -> dict[str, Any]:
    assert r.status_code in (200, 201, 202), r.text
    return r.json()  # type: ignore[no-any-return]


def rows(settings: Settings, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(settings.state_dir / "kvmnetd.db") as conn:
        return conn.execute(sql).fetchall()


@pytest.fixture
def world(vapi: TestClient, settings: Settings) -> dict[str, str]:
    """br0 filters VLANs 10 (tenant-a) and 20 (tenant-b); br1 carries VLAN 30 (tenant-c)
    with a bridge per VLAN; br2 carries none."""
    ids = {name: str(make_bridge(vapi, name)["id"]) for name in ("br0", "br1", "br2")}
    ids["tenant-a"] = vlan(vapi, "tenant-a", 10, "br0")
    ids["tenant-b"] = vlan(vapi, "tenant-b", 20, "br0")
    ids["tenant-c"] = vlan(vapi, "tenant-c", 30, "br1", backend="bridge_per_vlan")
    filtering_as_if_active(settings, ids["tenant-a"], ids["tenant-b"])
    return ids


# ---- validation ------------------------------------------------------------------------------


BAD_NICS: list[tuple[dict[str, Any], int, str]] = [
    ({"vlan": "nope"}, 404, "no VLAN 'nope'"),
    ({"bridge": "br2", "vlan": "tenant-a"}, 422, "rides on trunk 'br0'"),
    ({"bridge": "br1", "vlan_tagged": [30]}, 422, "needs the vlan_filtering backend"),
    ({"bridge": "br0", "vlan_tagged": [10, 30]}, 422, "VLAN 30 is not on bridge 'br0'"),
    ({"bridge": "br0", "vlan_tagged": [10], "native_vlan": 30}, 422, "VLAN 30 is not on"),
    ({"bridge": "br0", "vlan_tagged": [10], "native_vlan": 10}, 422, "both the native"),
    ({"bridge": "br0", "vlan_tagged": [10, 10]}, 422, "more than once"),
    ({"bridge": "br0", "vlan_tagged": []}, 422, "at least one"),
    ({"bridge": "br0", "vlan_tagged": [4095]}, 422, "reserved"),
    ({"bridge": "br2", "vlan_tagged": [10]}, 422, "carries no VLAN"),
    ({"vlan_tagged": [10]}, 422, "needs `bridge`"),
    ({"vlan": "tenant-a", "vlan_tagged": [20]}, 422, "exclude each other"),
    ({"bridge": "br0", "native_vlan": 10}, 422, "give `vlan_tagged` too"),
    ({}, 422, "needs `bridge` or `vlan`"),
    ({"backend": "user", "vlan": "tenant-a"}, 422, "is for the bridge backend"),
]


def test_a_bad_vlan_on_a_nic_is_refused_and_nothing_is_stored(
    vapi: TestClient, world: dict[str, str], settings: Settings
) -> None:
    """Each case against one world (a world costs seconds of netlink): the status, the
    reason, and nothing stored."""
    for nic, status, words in BAD_NICS:
        body = problem(vm(vapi, "web", nic), status)
        assert words in str(body), (nic, body)
        assert rows(settings, "SELECT count(*) FROM vms") == [(0,)]
        assert rows(settings, "SELECT count(*) FROM vm_nics") == [(0,)]


def test_nulls_in_a_nic_mean_no_vlan(vapi: TestClient, world: dict[str, str]) -> None:
    nic = {"bridge": "br0", "vlan": None, "vlan_tagged": None, "native_vlan": None}
    shown = created(vm(vapi, "web", nic))["nics"][0]
    assert (shown["vlan_id"], shown["vlan_tagged"], shown["native_vlan"]) == (None, [], None)
    assert shown["bridge_id"] == world["br0"]


# ---- accepted: stored, shown, planned ---------------------------------------------------------


def test_nics_on_vlans_are_stored_shown_and_planned(
    vapi: TestClient, world: dict[str, str], settings: Settings
) -> None:
    """An access NIC by VLAN name (bridge derived), one by VLAN id with its trunk named, a
    trunk NIC; the VM view shows them and tap_port_vlans plans their membership."""
    web = created(
        vm(
            vapi,
            "web",
            {"vlan": "TENANT-A"},  # names are found in any case
            {"bridge": "br0", "vlan": world["tenant-b"]},
            {"bridge": "br0", "vlan_tagged": [20, 10]},
            {"bridge": "br0", "vlan_tagged": [20], "native_vlan": 10},
            {"bridge": "br0"},
            {"vlan": "tenant-c"},
        )
    )
    nics = web["nics"]
    assert [n["bridge_id"] for n in nics] == [world[b] for b in ("br0",) * 5 + ("br1",)]
    assert [n["vlan_id"] for n in nics] == [
        world["tenant-a"],
        world["tenant-b"],
        None,
        None,
        None,
        world["tenant-c"],
    ]
    assert [n["vlan_tagged"] for n in nics] == [[], [], [10, 20], [20], [], []]
    assert [n["native_vlan"] for n in nics] == [None, None, None, 10, None, None]
    assert vapi.get(f"/v1/vms/{web['id']}").json()["nics"] == nics
    taps = [n["tap_name"] for n in nics]
    db = Database(settings.db_url)
    try:
        with db.reading() as session:
            planned = tap_port_vlans(session, world["br0"])
            assert tap_port_vlans(session, world["br1"]) == {}  # per-VLAN bridges: no filtering
            assert tap_port_vlans(session, world["br2"]) == {}
    finally:
        db.dispose()
    assert planned == {
        taps[0]: {10: Membership(10, pvid=True, untagged=True)},
        taps[1]: {20: Membership(20, pvid=True, untagged=True)},
        taps[2]: {10: Membership(10), 20: Membership(20)},
        taps[3]: {20: Membership(20), 10: Membership(10, pvid=True, untagged=True)},
    }  # the NIC on no VLAN is left as the kernel makes it


def test_taps_on_vlans_get_their_master_and_membership(
    vapi: TestClient, world: dict[str, str], settings: Settings, netns: str
) -> None:
    """A tap on a filtering VLAN stays on the trunk (read back from the kernel) as an access
    port; one on a per-VLAN-bridge VLAN is planned onto that VLAN's bridge."""
    r = vapi.post("/v1/taps?wait=10", json={"name": "tapa", "vlan": "tenant-a"})
    tapa = created(r)
    assert (tapa["bridge_id"], tapa["vlan_id"]) == (world["br0"], world["tenant-a"])
    assert tapa["status"] == "active", tapa
    kernel = links(netns)
    assert kernel["tapa"].master == "br0"
    r = vapi.post("/v1/taps", json={"name": "tapc", "bridge": "br1", "vlan": "tenant-c"})
    tapc = created(r)
    assert (tapc["bridge_id"], tapc["vlan_id"]) == (world["br1"], world["tenant-c"])
    problem(vapi.post("/v1/taps", json={"name": "tapx", "bridge": "br2", "vlan": "tenant-a"}), 422)
    db = Database(settings.db_url)
    try:
        with db.reading() as session:
            masters = {s.name: s.master for s in load_link_specs(session).specs}
            planned = tap_port_vlans(session, world["br0"])
    finally:
        db.dispose()
    assert masters["tapa"] == "br0"
    assert masters["tapc"] == "br1v30"  # vlan_bridge_name: Proxmox's vmbr0v10
    assert planned == {"tapa": {10: Membership(10, pvid=True, untagged=True)}}


def test_a_tap_changes_vlan_live_and_null_takes_it_off(
    vapi: TestClient, world: dict[str, str], settings: Settings
) -> None:
    """PATCH `vlan` moves the tap (its trunk follows); null keeps it on the trunk, off the
    VLAN, as a tap created without `vlan`; another bridge alone takes it off its VLAN."""
    tap = created(vapi.post("/v1/taps?wait=10", json={"name": "tapa", "vlan": "tenant-a"}))
    url = f"/v1/taps/{tap['id']}?wait=10"
    moved = created(vapi.patch(url, json={"vlan": "tenant-b"}))
    assert (moved["bridge_id"], moved["vlan_id"]) == (world["br0"], world["tenant-b"])
    assert moved["generation"] == tap["generation"] + 1
    off = created(vapi.patch(url, json={"vlan": None}))
    twin = created(vapi.post("/v1/taps?wait=10", json={"name": "tapt", "bridge": "br0"}))
    assert (off["bridge_id"], off["vlan_id"]) == (twin["bridge_id"], twin["vlan_id"])
    assert off["vlan_id"] is None and off["status"] == "active"
    created(vapi.patch(url, json={"vlan": "tenant-a"}))
    elsewhere = created(vapi.patch(url, json={"bridge": "br2"}))
    assert (elsewhere["bridge_id"], elsewhere["vlan_id"]) == (world["br2"], None)
    created(vapi.patch(url, json={"vlan": "tenant-a"}))
    detached = created(vapi.patch(url, json={"bridge": None}))
    assert (detached["bridge_id"], detached["vlan_id"]) == (None, None)
    r = vapi.patch(url, json={"bridge": "br2", "vlan": "tenant-a"})
    problem(r, 422, "invalid-input")
    shown = vapi.get(f"/v1/taps/{tap['id']}").json()
    assert shown["generation"] == detached["generation"]  # nothing changed


# ---- in use --------------------------------------------------------------------------------


def test_a_vlan_in_use_is_refused_and_force_detaches_its_users(
    vapi: TestClient, world: dict[str, str], settings: Settings
) -> None:
    created(vm(vapi, "web", {"vlan": "tenant-a"}, {"bridge": "br0"}))
    created(vm(vapi, "db", {"bridge": "br0", "vlan_tagged": [20], "native_vlan": 10}))
    created(vm(vapi, "app", {"bridge": "br0", "vlan_tagged": [20]}))
    created(vapi.post("/v1/taps?wait=10", json={"name": "tapa", "vlan": "tenant-a"}))
    url = f"/v1/vlans/{world['tenant-a']}"
    body = problem(vapi.delete(url), 409, "in-use")
    assert [(d["kind"], d["name"]) for d in body["dependents"]] == [
        ("vm_nic", "db/0"),
        ("vm_nic", "web/0"),
        ("tap", "tapa"),
    ]
    assert vapi.get(url).json()["name"] == "tenant-a"  # nothing changed
    r = vapi.delete(f"{url}?force=true")
    assert r.status_code == 202, r.text
    operation = vapi.get(r.headers["operation-location"]).json()
    assert {(d["kind"], d["name"], d["action"]) for d in operation["detached"]} == {
        ("vm_nic", "web/0", "removed"),
        ("vm_nic", "db/0", "removed"),
        ("tap", "tapa", "detached"),
    }
    web = vapi.get("/v1/vms/web").json()
    assert [n["bridge_id"] for n in web["nics"]] == [world["br0"]]  # its VLAN NIC left
    assert [n["vlan_id"] for n in web["nics"]] == [None]
    assert vapi.get("/v1/vms/db").json()["nics"] == []
    assert len(vapi.get("/v1/vms/app").json()["nics"]) == 1  # VLAN 20 only: untouched
    tap = vapi.get("/v1/taps/tapa").json()
    assert (tap["bridge_id"], tap["vlan_id"]) == (None, None)
    assert rows(settings, "SELECT count(*) FROM vm_nics WHERE vlan_id IS NOT NULL") == [(0,)]
