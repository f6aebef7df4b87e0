"""L2 segments in the database: where each segment kind's objects are stored, how a network
row and a VM NIC row point at one, and the one place that turns a network's row into its
segment (app.domain.segments: the interface its gateway, dnsmasq and NAT rules live on).

A kind is a `SegmentTable` here plus its driver in app.domain.segments. The built-in kinds'
objects are bridges, taps and VLANs; a network points at one through its own column
(`networks.bridge_id`, `tap_id`, `vlan_id`: exactly one is set, NETWORK_ONE_LINK), so a new
kind brings a table, that column (a migration) and its entry registered here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from app.db.models import Bridge, Network, ResourceColumns, Tap, Vlan, VmNic
from app.db.repositories.base import ResourceRepository, never_created
from app.domain.errors import InvalidInput
from app.domain.registry import Registry
from app.domain.segments import Segment, SegmentKind, SegmentObject, describe
from app.domain.tenancy import Scope


@dataclass(frozen=True)
class Port:
    """Where a port (a VM NIC's tap, or one of our tap resources) sits, as its row's
    columns say: what decides the segment it joins (`SegmentTable.port_ref`)."""

    bridge_id: str | None = None
    vlan_id: str | None = None  # an access port of this VLAN
    tagged: bool = False  # a trunk port (tagged VLANs): on no single segment
    tap_id: str | None = None  # a NIC on one of our tap resources


def nic_port(nic: VmNic) -> Port:
    tagged = isinstance(nic.vlan_tagged, list) and bool(nic.vlan_tagged)
    return Port(nic.bridge_id, nic.vlan_id, tagged, nic.tap_id)


def tap_port(tap: Tap) -> Port:
    """A tap resource as a port: on its bridge, untagged or an access port of its VLAN."""
    return Port(tap.bridge_id, tap.vlan_id)


@dataclass(frozen=True)
class SegmentTable:
    """Where the objects of one segment kind are stored.

    - `model`: their rows (named resources with a status: ResourceColumns);
    - `network_column`: the column of `networks` that points at one;
    - `facts`: a row as its driver needs it (None: a row it depends on is gone, say a
      VLAN's trunk);
    - `port_ref`: the object a port (a VM NIC, a tap resource) is on, if one of this kind;
    - `ports`: the query condition selecting the NICs that are ports of one object (the ones
      a new network on it gives fixed addresses);
    - `find`: a row by id or name within a Scope (None when there is none, or it is of a
      project the scope does not see).
    """

    kind: str
    model: type[ResourceColumns]
    network_column: InstrumentedAttribute[str | None]
    facts: Callable[[Session, Any], SegmentObject | None]
    port_ref: Callable[[Port], str | None]
    ports: Callable[[str], ColumnElement[bool]]
    find: Callable[[Session, str, Scope], ResourceColumns | None]


TABLES: Registry[SegmentTable] = Registry("stored segment kind", [k.value for k in SegmentKind])


def register_table(table: SegmentTable) -> SegmentTable:
    """Make `table` the storage of its kind (ValueError when the kind or column is taken:
    a network row must name its kind by the column that is set)."""
    taken = {t.network_column.key for t in TABLES.entries()}
    if table.kind not in TABLES and table.network_column.key in taken:  # (else: add says)
        raise ValueError(f"the column of segment kind {table.kind!r} is already registered")
    return TABLES.add(table.kind, table)


def unregister_table(kind: str) -> None:
    TABLES.remove(kind)


@contextlib.contextmanager
def registered_table(table: SegmentTable, replacing: str | None = None) -> Iterator[SegmentTable]:
    """`table` registered for the duration of the block, in place of kind `replacing`'s
    (tests: a kind defined in a test borrows a built-in kind's column)."""
    replaced = None if replacing is None else TABLES.get(replacing)
    if replacing is not None:
        TABLES.remove(replacing)
    try:
        register_table(table)
        try:
            yield table
        finally:
            TABLES.remove(table.kind)
    finally:
        if replaced is not None:
            TABLES.add(replaced.kind, replaced)


def segment_table(kind: str) -> SegmentTable:
    """The storage of `kind` (UnknownKind, a KeyError, for a kind nothing stores)."""
    return TABLES.get(kind)


# ---- a network's segment ----------------------------------------------------------------------


def network_ref(row: Network) -> tuple[str, str] | None:
    """(kind, object id) of the segment a network row points at (None once a deleted
    network's object went first: its column was set to NULL)."""
    for table in TABLES.entries():
        value = getattr(row, table.network_column.key)
        if value:
            return table.kind, value
    return None


def network_columns(kind: str, object_id: str) -> dict[str, str | None]:
    """The `networks` columns that point a new network at object `object_id` of `kind`."""
    segment_table(kind)  # KeyError for a kind nothing stores
    return {t.network_column.key: object_id if t.kind == kind else None for t in TABLES.entries()}


def segment_row(session: Session, row: Network) -> ResourceColumns | None:
    """The object a network is on (a bridge, tap or VLAN row)."""
    ref = network_ref(row)
    if ref is None:
        return None
    return session.get(segment_table(ref[0]).model, ref[1])


def object_facts(session: Session, kind: str, obj: ResourceColumns) -> SegmentObject | None:
    """An object of `kind` as its driver reads it (None when a row it depends on is gone)."""
    return segment_table(kind).facts(session, obj)


def object_segment(session: Session, kind: str, obj: ResourceColumns) -> Segment | None:
    """The segment an object of `kind` is (None when a row it depends on is gone)."""
    facts = object_facts(session, kind, obj)
    return describe(facts) if facts is not None else None


def network_segment(
    session: Session, row: Network
) -> tuple[ResourceColumns | None, Segment | None]:
    """A network's object and the segment it is: the single place that decides which
    interface carries its gateway, dnsmasq and NAT rules."""
    ref = network_ref(row)
    if ref is None:
        return None, None
    obj = session.get(segment_table(ref[0]).model, ref[1])
    return obj, object_segment(session, ref[0], obj) if obj is not None else None


def readable_segment(session: Session, row: Network) -> Segment | None:
    """The segment a network is on; None also when its object cannot be described (a row
    written by hand, say: the network worker reports that on the network itself), so one
    bad row never stops a listing or a check of the others."""
    with contextlib.suppress(InvalidInput):
        return network_segment(session, row)[1]
    return None


def network_on(session: Session, kind: str, object_id: str) -> Network | None:
    """The network on an object of `kind` (deleted or not; one at most: unique columns)."""
    column = segment_table(kind).network_column
    return session.scalars(select(Network).where(column == object_id)).first()


def network_of_object(session: Session, obj: ResourceColumns) -> Network | None:
    """The network on a bridge, tap or VLAN row, whichever kind stores rows of its model
    (deleted or not)."""
    for table in TABLES.entries():
        if isinstance(obj, table.model):
            found = network_on(session, table.kind, obj.id)
            if found is not None:
                return found
    return None


def find_object(session: Session, kind: str, ref: str, scope: Scope) -> ResourceColumns | None:
    """An object of `kind` by id or name, within `scope`."""
    return segment_table(kind).find(session, ref, scope)


def segment_ports(session: Session, kind: str, object_id: str) -> Sequence[VmNic]:
    """The VM NICs that are ports of an object of `kind` (see SegmentTable.ports)."""
    where = segment_table(kind).ports(object_id)
    return session.scalars(select(VmNic).where(where)).all()


def port_segment_ref(port: Port) -> tuple[str, str] | None:
    """(kind, object id) of the segment a port is on (None: it is on none, like a
    user-networking NIC or a trunk NIC, which carries several VLANs)."""
    for table in TABLES.entries():
        object_id = table.port_ref(port)
        if object_id:
            return table.kind, object_id
    return None


def nic_segment_ref(nic: VmNic) -> tuple[str, str] | None:
    """(kind, object id) of the segment a VM NIC is a port of (port_segment_ref)."""
    return port_segment_ref(nic_port(nic))


def preload_objects(session: Session, networks: Sequence[Network]) -> None:
    """Load the segment objects of these networks in one query per kind, so that resolving
    their segments afterwards reads the session's identity map instead of asking the
    database once per network."""
    wanted: dict[str, list[str]] = {}
    for network in networks:
        ref = network_ref(network)
        if ref is not None:
            wanted.setdefault(ref[0], []).append(ref[1])
    for kind, ids in wanted.items():
        model = segment_table(kind).model
        session.scalars(select(model).where(model.id.in_(ids))).all()


def network_interfaces(session: Session, kind: str | None = None) -> dict[str, str]:
    """Object id -> the L3 interface of every segment object (of `kind`, or any) that
    carries a network (deleted or not)."""
    result: dict[str, str] = {}
    networks = session.scalars(select(Network)).all()
    preload_objects(session, networks)
    for network in networks:
        ref = network_ref(network)
        if ref is None or kind not in (None, ref[0]):
            continue
        segment = readable_segment(session, network)
        if segment is not None:
            result[segment.id] = segment.l3_interface
    return result


# ---- the built-in kinds -----------------------------------------------------------------------


def _by_id_or_name(
    model: type[ResourceColumns], fold_case: bool = False
) -> Callable[[Session, str, Scope], Any]:
    """A kind's `find`: the generic repository's lookup (ids anywhere the scope sees, names
    in its home project; names in any case where they are unique that way)."""

    class Lookup(ResourceRepository[Any]):
        names_fold_case = fold_case

    def find(session: Session, ref: str, scope: Scope) -> ResourceColumns | None:
        found: ResourceColumns | None = Lookup(session, model).find(ref, scope)
        return found

    return find


def _bridge_facts(session: Session, row: Bridge) -> SegmentObject:
    delay = row.forward_delay_cs / 100 if row.stp else 0.0
    return SegmentObject(
        SegmentKind.BRIDGE.value,
        row.id,
        row.name,
        link=row.ifname,
        forward_delay_s=delay,
        status=row.status,
        status_reason=row.status_reason,
        never_created=never_created(row),
    )


def _tap_facts(session: Session, row: Tap) -> SegmentObject:
    return SegmentObject(
        SegmentKind.TAP.value,
        row.id,
        row.name,
        link=row.ifname,
        status=row.status,
        status_reason=row.status_reason,
        never_created=never_created(row),
    )


def _vlan_facts(session: Session, row: Vlan) -> SegmentObject | None:
    trunk = session.get(Bridge, row.trunk_id)
    if trunk is None:
        return None
    return SegmentObject(
        SegmentKind.VLAN.value,
        row.id,
        row.name,
        trunk=trunk.ifname,
        vid=row.vlan_id,
        backend=row.backend,
        status=row.status,
        status_reason=row.status_reason,
    )


def _untagged_bridge_port(port: Port) -> str | None:
    """A port on the bridge's untagged segment (not an access port of one of its VLANs,
    nor a trunk port)."""
    if port.vlan_id is not None or port.tagged:
        return None
    return port.bridge_id


register_table(
    SegmentTable(
        kind=SegmentKind.BRIDGE.value,
        model=Bridge,
        network_column=Network.bridge_id,
        facts=_bridge_facts,
        port_ref=_untagged_bridge_port,
        ports=lambda object_id: (
            (VmNic.bridge_id == object_id)
            & VmNic.vlan_id.is_(None)
            & (func.json_array_length(VmNic.vlan_tagged) == 0)
        ),
        find=_by_id_or_name(Bridge),
    )
)
register_table(
    SegmentTable(
        kind=SegmentKind.TAP.value,
        model=Tap,
        network_column=Network.tap_id,
        facts=_tap_facts,
        port_ref=lambda port: port.tap_id,
        ports=lambda object_id: VmNic.tap_id == object_id,
        find=_by_id_or_name(Tap),
    )
)
register_table(
    SegmentTable(
        kind=SegmentKind.VLAN.value,
        model=Vlan,
        network_column=Network.vlan_id,
        facts=_vlan_facts,
        port_ref=lambda port: port.vlan_id,
        ports=lambda object_id: VmNic.vlan_id == object_id,
        find=_by_id_or_name(Vlan, fold_case=True),
    )
)
