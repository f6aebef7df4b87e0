"""A VLAN per project (issue 11, item 4 and "the VLAN-per-project case in the kernel tier"), on
a kernel that has bridge VLAN filtering (Debian's own, booted by the kernel test tier),
through the in-process daemon (`daemon_app`) with project member tokens.

Two projects, acme (VLAN ranges 100-101) and globex (200-201), each with a member token. The
admin makes one trunk, br0. Each member creates a VLAN on br0 without `vlan_id`: acme's gets
100 and globex's 200, the first free ids of their ranges; acme's member asking for 200 is
refused (403, naming acme's ranges). Each member puts taps on its VLAN (acme two, globex one);
a "guest" namespace is wired to each tap (tap_wire.py), all with addresses in one IPv4
subnet, so only the VLAN keeps them apart. Proven: the VLANs are realized (active; the taps
are access ports with PVID 100 and 200 on br0, read back through netlink), acme's guests
reach each other, and globex's guest reaches neither of them (nor they it). One test, to
share the one costly setup (nested Python is ~12x slower).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from app.settings import Settings
from tests.kernel.nested.conftest import ModuleLoader, wired_guest
from tests.kernel.nested.test_vlan_guests_daemon import pings, settled
from tests.kernel.nested.test_vlans_daemon import daemon_app, memberships, ok, until
from tests.netns_tools import ip
from tests.tenancy import auth, make_project, make_token

_TIER_PLUGIN = Path(__file__).resolve().parents[1] / "conftest.py"
if os.environ.get("KVT_NESTED") != "1" and not _TIER_PLUGIN.is_file():
    pytest.skip(
        "runs only inside the nested Debian kernel of the kernel test tier (tests/kernel)",
        allow_module_level=True,
    )

PROJECTS = {"acme": [[100, 101]], "globex": [[200, 201]]}
# tap -> (project, guest MAC, guest address in the one subnet all guests share)
TAPS = {
    "ta1": ("acme", "02:00:00:00:0a:01", "10.70.0.1"),
    "ta2": ("acme", "02:00:00:00:0a:02", "10.70.0.2"),
    "tg1": ("globex", "02:00:00:00:0b:01", "10.70.0.3"),
}


def test_two_projects_vlans_from_their_ranges_on_one_trunk_are_apart(
    netns: str, settings: Settings, modules: ModuleLoader
) -> None:
    modules("bridge", "tun")  # no udev in the nested host: /dev/net/tun comes with the module
    with contextlib.ExitStack() as stack, daemon_app(netns, settings) as api:
        db = api.app.state.context.db  # type: ignore[attr-defined]
        # the admin's trunk, shared with both projects (their shared_segments)
        trunk = ok(api.post("/v1/bridges?wait=20", json={"name": "br0"}), 201)
        shared = [{"resource": "bridge", "id": trunk["id"]}]
        member = {
            name: auth(
                make_token(
                    db,
                    make_project(db, name, vlan_ranges=ranges, shared_segments=shared),
                    "member",
                )
            )
            for name, ranges in PROJECTS.items()
        }

        refused = api.post(
            "/v1/vlans", json={"name": "x", "trunk": "br0", "vlan_id": 200}, headers=member["acme"]
        )
        problem = ok(refused, 403)
        assert problem["vlan_ranges"] == [[100, 101]] and "100-101" in problem["detail"]
        # the admin reads them by id (a name resolves in the caller's own project)
        vlan_ids = []
        for project in PROJECTS:
            body = {"name": project, "trunk": "br0", "backend": "vlan_filtering"}
            vlan_ids.append(
                ok(api.post("/v1/vlans", json=body, headers=member[project]), 202)["id"]
            )
        vlans = {v["name"]: v for v in settled(api, "vlans", vlan_ids)}
        assert {name: v["vlan_id"] for name, v in vlans.items()} == {"acme": 100, "globex": 200}
        assert all(v["status"] == "active" for v in vlans.values()), vlans

        tap_ids = []
        for tap, (project, _, _) in TAPS.items():
            body = {"name": tap, "vlan": project}
            tap_ids.append(ok(api.post("/v1/taps", json=body, headers=member[project]), 202)["id"])
        ifname = {}  # a tenant's tap has a derived kernel name (app.domain.names.link_ifname)
        for shown in settled(api, "taps", tap_ids):
            assert shown["status"] == "active", shown
            ifname[shown["name"]] = shown["ifname"]
        # each tap an access port of its project's VLAN only (PVID, untagged), once the
        # trunk's membership pass ran (it follows the taps' create)
        access = {
            ifname[tap]: {vlans[project]["vlan_id"]: (True, True)}
            for tap, (project, _, _) in TAPS.items()
        }
        joined = until(
            lambda: all(memberships(netns, "br0").get(tap) == want for tap, want in access.items()),
            45,
            "taps on their VLANs",
        )
        assert joined, memberships(netns, "br0")
        guests = {
            tap: stack.enter_context(wired_guest(netns, ifname[tap], mac))
            for tap, (_, mac, _) in TAPS.items()
        }
        address = {tap: TAPS[tap][2] for tap in TAPS}
        for tap in TAPS:
            ip(guests[tap], "addr", "add", f"{address[tap]}/24", "dev", "eth0")
        assert pings(guests["ta1"], address["ta2"]), "acme's guests on VLAN 100"
        assert pings(guests["ta2"], address["ta1"]), "acme's guests on VLAN 100"
        for theirs in ("ta1", "ta2"):
            assert not pings(guests["tg1"], address[theirs], tries=1), f"globex -> acme {theirs}"
            assert not pings(guests[theirs], address["tg1"], tries=1), f"acme {theirs} -> globex"
