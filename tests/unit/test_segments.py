"""L2 segments as drivers (app.domain.segments, their storage in
app.db.repositories.segments): what each built-in kind decides (the L3 interface, the
bridge a NIC's tap joins, the VLAN membership of its ports, where the path probe goes),
and a kind defined in this file alone, registered for one test, carrying a managed network
end to end in the database: creation, the fixed addresses of its NICs, the worker's view
(dnsmasq's interface), the presenter's `link`, our own addresses and the path probe's
targets. Adding a segment kind is adding a module (and its storage), not editing switches.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from sqlalchemy.orm import Session

from app.db.models import Bridge, Network, Tap, Vlan, VmNic
from app.db.repositories import (
    BridgeFacts,
    SegmentTable,
    address_holders,
    load_network_state,
    network_ref,
    own_addresses,
    probe_targets,
    registered_table,
    segment_table,
    vlan_masters,
)
from app.db.session import Database
from app.domain.errors import Conflict, InvalidInput
from app.domain.segments import (
    Joiner,
    Segment,
    SegmentDriver,
    SegmentKind,
    SegmentObject,
    describe,
    kinds,
    registered,
    segment_driver,
)
from app.domain.vlans import vlan_bridge_name
from app.schemas.links import TapCreate
from app.schemas.networks import NetworkCreate
from app.schemas.vms import VmCreate
from app.services.links import TapService
from app.services.networks import NetworkService
from app.services.vms import HostFacts, VmService

HOST = HostFacts(
    nic_models=frozenset({"virtio-net-pci"}), vhost_missing="not probed", kvm_runs_guests=False
)
BOOT = {"kernel": "/k/vmlinuz"}
LONG = vlan_bridge_name("trunk-bridge-0", 4000)


def vlan(backend: str, trunk: str = "br0", vid: int = 10) -> SegmentObject:
    return SegmentObject("vlan", "v1", "tenant-a", trunk=trunk, vid=vid, backend=backend)


def test_the_built_in_kinds_are_registered_in_order() -> None:
    assert kinds() == ["bridge", "tap", "vlan"]
    assert [segment_driver(k).kind for k in kinds()] == kinds()
    assert [segment_table(k).kind for k in kinds()] == kinds()


@pytest.mark.parametrize(
    ("obj", "segment"),
    [
        (
            SegmentObject("bridge", "b1", "br0", link="br0", forward_delay_s=15.0),
            Segment("bridge", "b1", "br0", "br0", "br0", None, "br0", 15.0),
        ),
        (
            SegmentObject("tap", "t1", "tap1", link="tap1"),
            Segment("tap", "t1", "tap1", "tap1", None, None, None),
        ),
        (
            vlan("vlan_filtering"),
            Segment("vlan", "v1", "tenant-a", "br0.10", "br0", 10, None),
        ),
        (
            vlan("bridge_per_vlan"),
            Segment("vlan", "v1", "tenant-a", "br0v10", "br0v10", None, "br0v10"),
        ),
        (  # names over 15 characters are derived, never truncated (app.domain.vlans)
            vlan("bridge_per_vlan", trunk="trunk-bridge-0", vid=4000),
            Segment("vlan", "v1", "tenant-a", LONG, LONG, None, LONG),
        ),
    ],
)
def test_each_kind_says_where_l3_ports_and_the_probe_go(
    obj: SegmentObject, segment: Segment
) -> None:
    assert describe(obj) == segment


def test_unreadable_objects_and_unknown_kinds_are_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="unknown segment kind 'vxlan'; known: bridge, tap"):
        describe(SegmentObject("vxlan", "x1", "x"))
    with pytest.raises(InvalidInput, match="unknown backend 'qinq'"):
        describe(vlan("qinq"))
    with pytest.raises(InvalidInput, match="its trunk, VID or backend is unknown"):
        describe(SegmentObject("vlan", "v1", "tenant-a", vid=10, backend="vlan_filtering"))
    with pytest.raises(InvalidInput, match="bridge 'br0' has no kernel link"):
        describe(SegmentObject("bridge", "b1", "br0"))


# ---- in the database --------------------------------------------------------------------------


def add_vlan(session: Session, backend: str, vid: int = 10) -> Vlan:
    trunk = session.query(Bridge).filter_by(name="br0").one()
    row = Vlan(name=f"tenant-{vid}", vlan_id=vid, trunk_id=trunk.id, backend=backend)
    session.add(row)
    session.flush()
    return row


def create_vm(db: Database, name: str, *nics: dict[str, Any]) -> list[VmNic]:
    body = VmCreate.model_validate_json(json.dumps({"name": name, "boot": BOOT, "nics": nics}))
    with db.unit_of_work() as s:
        return VmService(s).create(body, HOST)[1]


def body(model: type[NetworkCreate], name: str, subnet: str, **link: str) -> NetworkCreate:
    return model.model_validate({"name": name, "subnet": subnet, **link})


def create_network(db: Database, body: NetworkCreate) -> tuple[str, str | None]:
    """(network id, its link as the API shows it)."""
    with db.unit_of_work() as s:
        service = NetworkService(s)
        row, _ = service.create(body)
        return row.id, service.link_name(row)


def test_built_in_kinds_put_each_network_on_its_segments_l3_interface(db: Database) -> None:
    with db.unit_of_work() as s:
        filtering = add_vlan(s, "vlan_filtering", 10).id
        per_vlan = add_vlan(s, "bridge_per_vlan", 20).id
        masters = vlan_masters(s, {s.query(Bridge).one().id: BridgeFacts("br0", 1500)})
        assert {k: v.name for k, v in masters.items()} == {filtering: "br0", per_vlan: "br0v20"}
    made = [
        create_network(
            db,
            body(NetworkCreate, "a", "10.71.0.0/24", bridge="br0"),
        ),
        create_network(db, body(NetworkCreate, "b", "10.72.0.0/24", tap="tap1")),
        create_network(
            db,
            body(NetworkCreate, "c", "10.73.0.0/24", vlan="tenant-10"),
        ),
        create_network(
            db,
            body(NetworkCreate, "d", "10.74.0.0/24", vlan="TENANT-20"),
        ),
    ]
    assert [link for _, link in made] == ["br0", "tap1", "br0.10", "br0v20"]
    with db.reading() as s:
        states, _ = load_network_state(s)
        assert {n.row.name: n.service.interface for n in states} == {
            "a": "br0",
            "b": "tap1",
            "c": "br0.10",
            "d": "br0v20",
        }
        kinds_of = {r.name: network_ref(r) for r in s.query(Network)}
        assert {name: ref[0] for name, ref in kinds_of.items() if ref} == {
            "a": "bridge",
            "b": "tap",
            "c": "vlan",
            "d": "vlan",
        }
        assert {t.network: t.bridge for t in probe_targets(s)} == {
            "a": "br0",
            "b": None,
            "c": None,
            "d": "br0v20",
        }
        own = own_addresses(s)
        assert own["br0.10"] == ["10.73.0.1/24"] and own["br0v20"] == ["10.74.0.1/24"]


# ---- a kind this file adds --------------------------------------------------------------------


class GatewayPortSegment(SegmentDriver):
    """A bridge whose host side is not the bridge itself but a port of it, `<bridge>-gw`
    (as a veth pair or an OVS internal port would be): the gateway, dnsmasq and NAT live
    there; guests' taps still join the bridge, and the path probe stays off it."""

    kind: ClassVar[str] = "gwport"
    label: ClassVar[str] = "gateway port"

    def l3_interface(self, obj: SegmentObject) -> str:
        return f"{obj.link}-gw"

    def probe_bridge(self, obj: SegmentObject) -> str | None:
        return None

    def join_refusal(self, obj: SegmentObject, joiner: Joiner) -> str | None:
        """Its own rule: nothing joins while the bridge is in error (its gateway port
        would be missing), whatever created it."""
        if obj.status == "error":
            return f"gateway port of {obj.name!r} is down ({obj.status_reason}): not {joiner}"
        return None


def _gwport_facts(session: Session, row: Bridge) -> SegmentObject:
    return SegmentObject(
        "gwport",
        row.id,
        row.name,
        link=row.name,
        status=row.status,
        status_reason=row.status_reason,
    )


# its objects are bridges; a real kind brings its own table and `networks` column (a
# migration), this one borrows the bridge kind's for the test
GWPORT = SegmentTable(
    kind="gwport",
    model=Bridge,
    network_column=Network.bridge_id,
    facts=_gwport_facts,
    port_ref=lambda port: port.bridge_id,
    ports=segment_table("bridge").ports,
    find=segment_table("bridge").find,
)


class GwportNetwork(NetworkCreate):
    """The request as a client of the new kind would send it (the API's fields name the
    built-in kinds; a new kind adds its own)."""

    def segment(self) -> tuple[str, str]:
        return "gwport", "br0"


@pytest.fixture
def gwport() -> Iterator[None]:
    with registered(GatewayPortSegment), registered_table(GWPORT, replacing="bridge"):
        yield
    assert "gwport" not in kinds()
    assert segment_table("bridge").kind == "bridge"


def test_a_kind_added_by_one_module_carries_a_network_end_to_end(
    db: Database, gwport: None
) -> None:
    (early,) = create_vm(db, "vm1", {"backend": "bridge", "bridge": "br0"})
    network_id, link = create_network(db, body(GwportNetwork, "nat0", "10.75.0.0/24", bridge="br0"))
    assert link == "br0-gw"
    (late,) = create_vm(db, "vm2", {"backend": "bridge", "bridge": "br0", "ipv4": "10.75.0.9"})
    with db.reading() as s:
        row = s.get(Network, network_id)
        assert row is not None and network_ref(row) == ("gwport", row.bridge_id)
        # the NIC already on the segment was adopted, the new one got what it asked for
        nics = {n.id: n.ipv4 for n in s.query(VmNic)}
        assert nics == {early.id: "10.75.0.2", late.id: "10.75.0.9"}
        (state,), _ = load_network_state(s)
        assert (state.link_name, state.service.interface) == ("br0-gw", "br0-gw")
        assert [h.address for h in state.service.hosts] == ["10.75.0.2", "10.75.0.9"]
        assert own_addresses(s)["br0-gw"] == ["10.75.0.1/24"]
        assert own_addresses(s)["br0"] == []  # the bridge itself carries no address
        held = [(h.link, h.address) for h in address_holders(s) if h.kind == "network"]
        assert held == [("br0-gw", "10.75.0.1/24")]
        assert [(t.network, t.bridge) for t in probe_targets(s)] == [("nat0", None)]
    with pytest.raises(Exception, match="already carries network 'nat0'"):
        create_network(
            db,
            body(GwportNetwork, "nat1", "10.76.0.0/24", bridge="br0"),
        )


def test_without_the_kind_the_same_row_is_a_bridge_network_again(db: Database) -> None:
    """The row does not store the kind's decisions: the registered driver makes them."""
    with registered(GatewayPortSegment), registered_table(GWPORT, replacing="bridge"):
        network_id, link = create_network(
            db,
            body(GwportNetwork, "nat0", "10.75.0.0/24", bridge="br0"),
        )
        assert link == "br0-gw"
    with db.reading() as s:
        row = s.get(Network, network_id)
        assert row is not None and network_ref(row) == (SegmentKind.BRIDGE, row.bridge_id)
        assert NetworkService(s).link_name(row) == "br0"


def break_br0(db: Database) -> None:
    """br0 in error, but once created (not `never_created`: the bridge kind's own rule for
    taps stays out of the way)."""
    with db.unit_of_work() as s:
        row = s.query(Bridge).filter_by(name="br0").one()
        row.status, row.status_reason, row.observed_ifindex = "error", "veth gone", 7


def join_br0_three_ways(db: Database, network: type[NetworkCreate] = GwportNetwork) -> list[str]:
    """A network, a VM NIC and a tap resource asking to join br0: what each was told (""
    when accepted), and nothing of a refused one is stored."""
    told = []
    for attempt in (
        lambda: create_network(db, body(network, "nat0", "10.75.0.0/24", bridge="br0")),
        lambda: create_vm(db, "vm1", {"backend": "bridge", "bridge": "br0"}),
        lambda: create_tap(db, "tap2", "br0"),
    ):
        try:
            attempt()
            told.append("")
        except Conflict as exc:
            told.append(exc.detail)
    return told


def create_tap(db: Database, name: str, bridge: str) -> None:
    with db.unit_of_work() as s:
        TapService(s).create(TapCreate(name=name, bridge=bridge))


def test_a_kind_added_by_one_module_decides_who_may_join_it(db: Database, gwport: None) -> None:
    """The networks, NIC and tap services ask the segment's driver (GatewayPortSegment's
    join rule), never the kind's name: each joiner is refused with the kind's reason."""
    break_br0(db)
    assert join_br0_three_ways(db) == [
        f"gateway port of 'br0' is down (veth gone): not {joiner}"
        for joiner in ("a network", "a VM NIC", "a tap")
    ]
    with db.reading() as s:
        assert (s.query(Network).count(), s.query(VmNic).count()) == (0, 0)
        assert [t.name for t in s.query(Tap)] == ["tap1"]
    with db.unit_of_work() as s:
        s.query(Bridge).filter_by(name="br0").one().status = "active"
    assert join_br0_three_ways(db) == ["", "", ""]


def test_the_same_bridge_in_error_is_joined_as_a_plain_bridge(db: Database) -> None:
    """Without the kind, br0's rule is the bridge kind's: a bridge once created may be
    joined in error (it is retried), so the refusals above came from the added kind."""
    break_br0(db)
    assert join_br0_three_ways(db, NetworkCreate) == ["", "", ""]


@pytest.mark.parametrize("joiner", list(Joiner))
def test_built_in_join_rules(joiner: Joiner) -> None:
    """A VLAN in error refuses everyone with its reason; a bridge never created refuses a
    tap resource only; a tap refuses no one."""
    failed = SegmentObject("vlan", "v1", "tenant-a", status="error", status_reason="no 8021q")
    assert segment_driver("vlan").join_refusal(failed, joiner) == (
        f"VLAN 'tenant-a' is in error (no 8021q); {joiner} cannot join it until it is "
        "active: remove the cause (it is retried at every full pass), or delete it and "
        "create one the host can carry"
    )
    assert segment_driver("vlan").join_refusal(vlan("vlan_filtering"), joiner) is None
    ghost = SegmentObject(
        "bridge",
        "b1",
        "eth0",
        link="eth0",
        status="error",
        status_reason="taken",
        never_created=True,
    )
    refusal = segment_driver("bridge").join_refusal(ghost, joiner)
    if joiner is Joiner.TAP:
        assert refusal == "bridge 'eth0' was never created (taken); a tap cannot join it"
    else:
        assert refusal is None
    tap = SegmentObject("tap", "t1", "tap1", link="tap1", status="error", never_created=True)
    assert segment_driver("tap").join_refusal(tap, joiner) is None


def test_a_vlan_in_error_refuses_every_joiner_in_the_services(db: Database) -> None:
    with db.unit_of_work() as s:
        row = add_vlan(s, "vlan_filtering", 10)
        row.status, row.status_reason = "error", "no CONFIG_BRIDGE_VLAN_FILTERING"
    attempts = [
        lambda: create_network(db, body(NetworkCreate, "n", "10.77.0.0/24", vlan="tenant-10")),
        lambda: create_vm(db, "vm1", {"backend": "bridge", "vlan": "tenant-10"}),
        lambda: create_tap_on_vlan(db, "tap2", "tenant-10"),
    ]
    for attempt, joiner in zip(attempts, ("a network", "a VM NIC", "a tap"), strict=True):
        with pytest.raises(Conflict, match=f"VLAN 'tenant-10' is in error .*; {joiner} cannot"):
            attempt()
    with db.unit_of_work() as s:
        s.query(Vlan).one().status = "active"
    for attempt in attempts:
        attempt()


def create_tap_on_vlan(db: Database, name: str, vlan_name: str) -> None:
    with db.unit_of_work() as s:
        TapService(s).create(TapCreate(name=name, vlan=vlan_name))
