"""Ports on VLANs in the database (app.db.repositories.port_vlans), on SQLite through the
services, no kernel: where each tap goes (its master, as the link planner and the VM worker
get it) and the VLAN membership a filtering trunk should give each tap (tap_port_vlans)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.db.models import Vm, VmNic
from app.db.repositories import (
    BridgeFacts,
    bridge_facts,
    load_link_specs,
    port_master,
    tap_port_vlans,
    uplink_moves,
    vlan_referrers,
)
from app.db.session import Database
from app.domain.errors import InvalidInput
from app.domain.nics.bridge import trunk_vlans
from app.domain.vlan_ports import Membership
from app.domain.vlans import VlanBackend, VlanFacts
from app.schemas.links import BridgeCreate, TapCreate
from app.schemas.networks import NetworkCreate
from app.schemas.vlans import VlanCreate
from app.schemas.vms import VmCreate
from app.services.links import BridgeService, TapService
from app.services.networks import NetworkService
from app.services.vlans import VlanService
from app.services.vms import HostFacts, VmPowerService, VmService
from app.supervisor.vm_taps import tap_plans
from tests.db_template import seeded_database_file

HOST = HostFacts(frozenset({"virtio-net-pci"}), vhost_missing="not probed", kvm_runs_guests=False)
ACCESS = {"pvid": True, "untagged": True}


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    """br0 filters VLANs 10 and 20; br1 carries VLAN 30 on a bridge of its own."""
    database = Database(f"sqlite:///{seeded_database_file(tmp_path / 'k.db')}")
    with database.unit_of_work() as s:
        for name in ("br0", "br1"):
            BridgeService(s).create(BridgeCreate(name=name))
        for name, vid, trunk, backend in (
            ("va", 10, "br0", "vlan_filtering"),
            ("vb", 20, "br0", "auto"),
            ("vc", 30, "br1", "bridge_per_vlan"),
        ):
            body = VlanCreate.model_validate(
                {"name": name, "vlan_id": vid, "trunk": trunk, "backend": backend}
            )
            VlanService(s).create(body, VlanFacts({}))
    yield database
    database.dispose()


def vm(db: Database, name: str, *nics: dict[str, Any]) -> list[VmNic]:
    body = VmCreate.model_validate_json(
        json.dumps(
            {
                "name": name,
                "boot": {"kernel": "/k"},
                "nics": [{"backend": "bridge", **n} for n in nics],
            }
        )
    )
    with db.unit_of_work() as s:
        return VmService(s).create(body, HOST)[1]


def test_taps_and_nics_get_the_vlans_bridge_as_master(db: Database) -> None:
    """bridge_per_vlan: the VLAN's own bridge; vlan_filtering: the trunk; no VLAN: its
    bridge. The same for tap resources (link planner) and VM taps (VM worker)."""
    with db.unit_of_work() as s:
        TapService(s).create(TapCreate.model_validate({"name": "ta", "vlan": "va"}))
        TapService(s).create(TapCreate.model_validate({"name": "tc", "vlan": "vc"}))
        TapService(s).create(TapCreate.model_validate({"name": "t0", "bridge": "br1"}))
    nics = vm(db, "web", {"vlan": "va"}, {"vlan": "vc"}, {"bridge": "br1"})
    with db.reading() as s:
        masters = {spec.name: spec.master for spec in load_link_specs(s).specs}
        bridges = bridge_facts(s, uplink_moves(s))
        row = s.get(Vm, nics[0].vm_id)
        assert row is not None
        rows = [s.get(VmNic, n.id) for n in nics]
        plans = tap_plans(row, [r for r in rows if r is not None], bridges)
    assert (masters["ta"], masters["tc"], masters["t0"]) == ("br0", "br1v30", "br1")
    assert [p.bridge for p in plans] == ["br0", "br1v30", "br1"]


def test_port_master_prefers_the_vlans_bridge() -> None:
    bridges = {"b0": BridgeFacts("br0", 1500), "v30": BridgeFacts("br0v30", 1500)}
    assert port_master("b0", "v30", bridges) == BridgeFacts("br0v30", 1500)
    assert port_master("b0", None, bridges) == BridgeFacts("br0", 1500)
    # a VLAN with no bridge to offer (gone, or a failed filtering trunk): no bridge at all,
    # never its trunk, where the port would be untagged, on no VLAN
    assert port_master("b0", "gone", bridges) is None
    assert port_master(None, None, bridges) is None


def test_tap_port_vlans_plans_access_and_trunk_ports(db: Database) -> None:
    with db.unit_of_work() as s:
        TapService(s).create(TapCreate.model_validate({"name": "ta", "vlan": "vb"}))
        TapService(s).create(TapCreate.model_validate({"name": "t0", "bridge": "br0"}))
    web = vm(db, "web", {"vlan": "va"}, {"bridge": "br0", "vlan_tagged": [20], "native_vlan": 10})
    gone = vm(db, "gone", {"vlan": "va"})
    with db.unit_of_work() as s:
        VmPowerService(s).delete("gone")
    with db.reading() as s:
        ids = {spec.name: spec.id for spec in load_link_specs(s).specs}
        planned = tap_port_vlans(s, ids["br0"])
        assert tap_port_vlans(s, ids["br1"]) == {}  # a per-VLAN-bridge trunk does not filter
        assert vlan_referrers(s, str(web[0].vlan_id)) == ["vm_nic gone/0", "vm_nic web/0"]
    assert planned == {
        "ta": {20: Membership(20, **ACCESS)},
        web[0].tap_name: {10: Membership(10, **ACCESS)},
        web[1].tap_name: {20: Membership(20), 10: Membership(10, **ACCESS)},
    }  # t0 (no VLAN) is left as the kernel makes it; the deleted VM's tap is not planned
    assert gone[0].tap_name not in planned


def test_trunk_vlans_checks_the_trunk_and_its_vids() -> None:
    filtering = {10: VlanBackend.VLAN_FILTERING, 20: VlanBackend.VLAN_FILTERING}
    vlans = trunk_vlans([20, 10], None, "br0", filtering)
    assert (vlans.tagged, vlans.native) == ((10, 20), None)
    per_vlan = {30: VlanBackend.BRIDGE_PER_VLAN}
    for tagged, native, on_trunk, words in (
        ([30], None, per_vlan, "needs the vlan_filtering backend"),
        ([10, 30], None, filtering, "VLAN 30 is not on bridge 'br0'"),
        ([10], 30, filtering, "VLAN 30 is not on bridge 'br0'"),
        ([10], None, {}, "carries no VLAN"),
    ):
        with pytest.raises(InvalidInput, match=words):
            trunk_vlans(tagged, native, "br0", on_trunk)


def test_a_network_on_the_trunk_adopts_only_its_untagged_nics(db: Database) -> None:
    """A managed network made later on the trunk serves its untagged segment: NICs on its
    VLANs and trunk NICs get no address there."""
    nics = vm(db, "web", {"bridge": "br0"}, {"vlan": "va"}, {"bridge": "br0", "vlan_tagged": [10]})
    with db.unit_of_work() as s:
        body = NetworkCreate.model_validate(
            {"name": "nat0", "bridge": "br0", "subnet": "10.95.0.0/24"}
        )
        NetworkService(s).create(body)
    with db.reading() as s:
        rows = [s.get(VmNic, n.id) for n in nics]
        assert [r.ipv4 is not None for r in rows if r is not None] == [True, False, False]
