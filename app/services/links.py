"""Bridge and tap use cases. Each accepted mutation bumps `generation`, sets the resource
pending and records an operation, all in the caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Interface
from typing import Any

from app.db.models import Bridge, LinkName, Operation, Tap, Vlan, new_id
from app.db.repositories import (
    BridgeRepository,
    LinkNameRepository,
    NetworkRepository,
    Port,
    PortRepository,
    TapRepository,
    VlanRepository,
    VmRepository,
    address_holders,
    own_addresses,
    stored_link_settings,
)
from app.db.session import Session
from app.domain.dependents import Dependent, DependentKind
from app.domain.errors import (
    BeingDeleted,
    Conflict,
    InUse,
    InvalidInput,
    NameTaken,
    NotFound,
)
from app.domain.isolation import require_bridge_port, require_port_isolation
from app.domain.links import generate_mac
from app.domain.names import (
    STP_FORWARD_DELAY_CS,
    link_ifname,
    validate_bridge_timers,
    validate_link_settings,
)
from app.domain.networks import HostPrefix, check_link_address, clash_reason, foreign_clash
from app.domain.segments import Joiner, SegmentKind
from app.domain.status import Status
from app.domain.stored import default_forward_delay_cs
from app.domain.tenancy import DEFAULT_PROJECT_ID, EVERY_PROJECT, LOCAL_ADMIN, Caller, Quota, Scope
from app.domain.vlans import VlanBackend, VlanFacts, vlan_bridge_name
from app.schemas.links import BridgeCreate, BridgeUpdate, TapCreate, TapUpdate
from app.services.in_use import InUseGuard
from app.services.operations import bump, record_operation
from app.services.quotas import QuotaGuard
from app.services.restrictions import HOST_IPV6, TAP_OWNER, require_admin_for
from app.services.scoping import create_project, create_scope, list_scope, shared_object
from app.services.segments import join_port, live_object


@dataclass(frozen=True)
class NewLink:
    """A bridge or tap about to be made: its id, its project and so its kernel name
    (app.domain.names.link_ifname), fixed before the host is asked whether a link kvmnetd
    does not manage already holds that name."""

    kind: str  # "bridge" or "tap"
    id: str
    project_id: str
    ifname: str

    @classmethod
    def plan(cls, kind: str, name: str, project_id: str = DEFAULT_PROJECT_ID) -> NewLink:
        row_id = new_id()
        return cls(kind, row_id, project_id, link_ifname(kind, project_id, row_id, name))


def plan_new_link(
    session: Session, caller: Caller, kind: str, name: str, project_id: str | None
) -> NewLink:
    """The NewLink of a bridge or tap `caller` creates called `name` in the project its
    body names (`project_id`; None: the caller's own; 404 for one it may not name)."""
    return NewLink.plan(kind, name, create_project(session, caller, project_id))


def _new_link(
    session: Session,
    caller: Caller,
    kind: str,
    name: str,
    project_id: str | None,
    new: NewLink | None,
) -> NewLink:
    """The NewLink the API planned (its project must be the one this create lands in: a
    plan for another project would have asked the host about another kernel name), else a
    fresh one."""
    planned = plan_new_link(session, caller, kind, name, project_id)
    if new is None:
        return planned
    if new.project_id != planned.project_id:
        raise ValueError(
            f"{kind} planned in project {new.project_id}, created in {planned.project_id}"
        )
    return new


def refuse_foreign(name: str, foreign: dict[str, Any] | None) -> None:
    """`foreign`: the host link already called `name` that kvmnetd does not own (from the
    host inspector). A bridge or tap of that name could never be created, and its row would
    stand for the foreign link (an uplink, taps attached to it)."""
    if foreign is not None:
        kind = f"{foreign['kind']} " if foreign.get("kind") else ""
        raise NameTaken(
            f"link name {name!r} is taken on the host by a {kind}link kvmnetd does not "
            f"manage (ifindex {foreign['ifindex']})"
        )


def name_holder(session: Session, claim: LinkName, scope: Scope = EVERY_PROJECT) -> str:
    """Who holds a kernel link name of ours, as a user knows it: a VM's NIC tap by VM and
    NIC, a bridge, tap or VLAN by name (and id); one of a project `scope` does not see only
    as that (its name and id stay unrevealed)."""
    if claim.resource == "vm":
        vms = VmRepository(session)
        vm = vms.get(claim.resource_id)
        nic = next((n for n in vms.nics(claim.resource_id) if n.tap_name == claim.name), None)
        if vm is not None and not scope.sees(vm.project_id):
            return "a VM NIC's tap of another project"
        if vm is not None:
            which = f"NIC {nic.position}" if nic is not None else "a NIC"
            return f"the tap of VM {vm.name!r}'s {which} ({vm.id})"
    row: Bridge | Tap | Vlan | None = None
    if claim.resource == "bridge":
        row = BridgeRepository(session).get(claim.resource_id)
    elif claim.resource == "tap":
        row = TapRepository(session).get(claim.resource_id)
    elif claim.resource == "vlan":
        row = VlanRepository(session).get(claim.resource_id)
    if row is not None and not scope.sees(row.project_id):
        return f"a {claim.resource} of another project"
    if row is not None:
        return f"{claim.resource} {row.name!r} ({row.id})"
    return f"{claim.resource} {claim.resource_id}"


def refuse_taken(
    session: Session, name: str, foreign: dict[str, Any] | None, scope: Scope = EVERY_PROJECT
) -> None:
    """409 name-taken when a resource of ours claims the kernel name `name` (naming it: a
    VM's NIC tap carries a mark of ours that is no bridge's or tap's, so the host alone
    would call it foreign), else when a host link kvmnetd does not manage has it."""
    claim = LinkNameRepository(session).get(name)
    if claim is not None:
        raise NameTaken(f"link name {name!r} is taken: it is {name_holder(session, claim, scope)}")
    refuse_foreign(name, foreign)


def _claim_name(session: Session, name: str, resource: str, resource_id: str, scope: Scope) -> None:
    names = LinkNameRepository(session)
    existing = names.get(name)
    if existing is not None:
        holder = name_holder(session, existing, scope)
        raise NameTaken(f"link name {name!r} is taken: it is {holder}")
    # writers are serialized (Database.unit_of_work), so nothing can claim the name between
    # the read above and this insert; the primary key still guards against any other writer
    names.add(LinkName(name=name, resource=resource, resource_id=resource_id))


def _refuse_same_name(
    session: Session, model: type[Bridge] | type[Tap], new: NewLink, name: str
) -> None:
    """Names are unique per project and kind (409 name-taken). In the default project the
    claim of the kernel name, which is the name, refuses a second one (naming the holder);
    elsewhere the kernel name is derived from the id, so the name is looked up here."""
    if new.project_id == DEFAULT_PROJECT_ID:
        return
    repository = BridgeRepository(session) if model is Bridge else TapRepository(session)
    if repository.named_in_project(new.project_id, name) is not None:
        raise NameTaken(f"this project already has a {new.kind} named {name!r}")


def _apply_changes(row: Bridge | Tap, changes: dict[str, Any]) -> bool:
    changed = False
    for field, value in changes.items():
        if getattr(row, field) != value:
            setattr(row, field, value)
            changed = True
    return changed


def _delay_cs(stp: bool, forward_delay: float | None) -> int:
    """Seconds to centiseconds; None (not given, or null in a PATCH) is the default for
    `stp`."""
    if forward_delay is None:
        return default_forward_delay_cs(stp)
    return round(forward_delay * 100)


def _check_link(row: Bridge | Tap) -> None:
    """The row as a whole, after a change. A stored value that cannot be used (a row written
    by hand) counts as its default here and stays reported on the row until it is set."""
    settings, _ = stored_link_settings(row)
    validate_link_settings(settings["mtu"], settings["addresses"])
    if isinstance(row, Bridge):
        # the pair as it is now (a request may have made it one the kernel refuses)
        delay = row.forward_delay_cs
        validate_bridge_timers(
            settings["stp"], delay if type(delay) is int else settings["forward_delay_cs"]
        )


def _check_tap_follows(tap: Tap, bridge: Bridge) -> None:
    """A tap without an MTU of its own takes its bridge's (app.domain.links.tap_mtu), so the
    bridge's MTU must suit the tap's addresses too (IPv6 needs >= 1280, RFC 8200 section 5)."""
    if tap.mtu is not None or bridge.mtu is None or tap.deleted:
        return
    try:
        validate_link_settings(bridge.mtu, stored_link_settings(tap)[0]["addresses"])
    except InvalidInput as exc:
        raise InvalidInput(
            f"tap {tap.name!r} on bridge {bridge.name!r} has no MTU of its own and would take "
            f"the bridge's: {exc}"
        ) from None


def check_addresses(
    session: Session,
    row: Bridge | Tap,
    added: Sequence[str],
    host_prefixes: Sequence[HostPrefix],
    own: dict[str, list[str]] | None = None,
    scope: Scope | None = None,
) -> None:
    """The IPv4 addresses `added` to the link must be no one else's: 409 naming the holder
    (app.domain.networks.check_link_address), or the host interface and prefix that already
    uses the subnet (`host_prefixes` from the host inspector; `own`: our addresses before the
    change, as own_addresses, read here when not given), the same check a network's subnet
    gets. Nothing is read when no IPv4 address is added (the common tap create)."""
    wanted = [IPv4Interface(text) for text in added if ":" not in text]
    if not wanted:
        return
    held = address_holders(session, row.id)
    if scope is not None:  # another project's holder is named by its kind only
        held = [holder.hidden_unless(scope.sees) for holder in held]
    own = own_addresses(session) if own is None else own
    for address in wanted:
        check_link_address(row.ifname, address, held)  # holders name links by kernel name
        clash = foreign_clash(address.network, host_prefixes, own)
        if clash is not None:
            raise Conflict(
                clash_reason(address.network, clash), interface=clash.interface, prefix=clash.prefix
            )


def _member_addresses(caller: Caller, added: Sequence[str]) -> None:
    """A non-admin's host addresses are IPv4 only: those are checked against the host's
    own prefixes (check_addresses, 409); an IPv6 one is not, and could take the host's
    IPv6 routes (403)."""
    if any(":" in text for text in added):
        require_admin_for(caller, "addresses", HOST_IPV6)


def _added(before: object, changes: dict[str, Any]) -> list[str]:
    """The addresses a PATCH adds (`before`: the stored list, which may be garbage)."""
    old = before if isinstance(before, list) else []
    return [a for a in changes.get("addresses") or () if a not in old]


def _check_owner(caller: Caller, uid: int | None, gid: int | None) -> None:
    """A tap's owner_uid/owner_gid (a host user and group that may open it) are an
    admin's to give (403 naming the field); null (no owner) is anyone's."""
    for field, value in (("owner_uid", uid), ("owner_gid", gid)):
        if value is not None:
            require_admin_for(caller, field, TAP_OWNER)


def require_alive(row: Bridge | Tap | None, kind: str, ref: str) -> Bridge | Tap:
    if row is None:
        raise NotFound(f"no {kind} {ref!r}")
    if row.deleted:
        raise BeingDeleted(f"{kind} {row.name!r} is being deleted")
    return row


def find_bridge(session: Session, ref: str, scope: Scope) -> Bridge | None:
    """The bridge `ref` names that a port of a caller of `scope` may join: its project's,
    or one shared with it (shared_object); None as for an unknown one."""
    found = BridgeRepository(session).find(ref, scope)
    if found is None:
        shared = shared_object(session, scope, SegmentKind.BRIDGE, ref)
        found = shared if isinstance(shared, Bridge) else None
    return found


def vlan_port(
    session: Session,
    bridge_ref: str | None,
    vlan_ref: str | None,
    facts: VlanFacts | None = None,
    scope: Scope = EVERY_PROJECT,
) -> tuple[Bridge, Vlan | None]:
    """The bridge a port joins (a VM NIC's tap or a tap resource) and the VLAN it is an
    access port of. With a VLAN the bridge may be omitted: it is the VLAN's trunk; named,
    it must be that trunk (422). An unknown VLAN or bridge is 404 (an unknown VLAN where
    the host can carry none, `facts`, is 409 host-lacks-feature), one being deleted 409.
    Whether the port may join the segment it lands on is the caller's next question
    (app.services.segments.join_port, once it knows the whole port). `scope`: the caller's;
    another project's bridge or VLAN is unknown unless shared with it (find_segment)."""
    vlan: Vlan | None = None
    if vlan_ref is not None:
        found_vlan = live_object(session, SegmentKind.VLAN, vlan_ref, facts, scope)
        assert isinstance(found_vlan, Vlan)
        vlan = found_vlan
    if bridge_ref is None:
        if vlan is None:
            raise InvalidInput("a port on a bridge names its `bridge` or its `vlan`")
        trunk = BridgeRepository(session).get(vlan.trunk_id)
        assert trunk is not None  # a live VLAN keeps its trunk (app.db.models.Vlan)
        return trunk, vlan
    found = require_alive(find_bridge(session, bridge_ref, scope), "bridge", bridge_ref)
    assert isinstance(found, Bridge)
    if vlan is not None and vlan.trunk_id != found.id:
        trunk = BridgeRepository(session).get(vlan.trunk_id)
        raise InvalidInput(
            f"VLAN {vlan.name!r} rides on trunk {trunk.name if trunk else vlan.trunk_id!r}, "
            f"not on bridge {found.name!r}: name its trunk as `bridge`, or leave `bridge` out"
        )
    return found, vlan


def vid_backends(session: Session, trunk_id: str) -> dict[int, VlanBackend]:
    """The live VLANs of a trunk: VID -> the trunk's backend (one per trunk)."""
    vlans = VlanRepository(session).on_trunk(trunk_id, live_only=True)
    return {v.vlan_id: VlanBackend(v.backend) for v in vlans}


class BridgeService:
    def __init__(self, session: Session, caller: Caller = LOCAL_ADMIN) -> None:
        self.session = session
        self.caller = caller
        self.scope = caller.scope
        self.bridges = BridgeRepository(session)
        self.taps = TapRepository(session)

    def get(self, ref: str) -> Bridge:
        row = self.bridges.find(ref, self.scope)
        if row is None:
            raise NotFound(f"no bridge {ref!r}{self._vlan_bridge_hint(ref)}")
        return row

    def _vlan_bridge_hint(self, ref: str) -> str:
        """Where to look when `ref` names a bridge_per_vlan VLAN's own bridge (a link the VLAN
        owns, no bridge resource): its trunk's views and the VLAN's."""
        claim = LinkNameRepository(self.session).get(ref)
        vlan = VlanRepository(self.session).get(claim.resource_id) if claim else None
        if claim is None or claim.resource != "vlan" or vlan is None:
            return ""
        if not self.scope.sees(vlan.project_id):
            return ""
        trunk = self.bridges.get(vlan.trunk_id)
        if trunk is None or vlan_bridge_name(trunk.ifname, vlan.vlan_id) != ref:
            return ""
        return (
            f": {ref} is the own bridge of VLAN {vlan.name!r} (VID {vlan.vlan_id}, backend "
            f"bridge_per_vlan) on trunk {trunk.name!r}, no bridge resource; its ports and MAC "
            f"table are in GET /v1/bridges/{trunk.name}, /v1/bridges/{trunk.name}/fdb and "
            f"/v1/bridges/{trunk.name}/vlans (`via` {ref}), and in GET "
            f"/v1/vlans/{vlan.name}/ports and /v1/vlans/{vlan.name}/fdb"
        )

    def page(
        self, limit: int, cursor: str | None, project: str | None = None
    ) -> tuple[Sequence[Bridge], str | None]:
        """A page of the bridges the caller sees (`project`: ?project=, list_scope)."""
        return self.bridges.page(limit, cursor, list_scope(self.session, self.caller, project))

    def create(
        self,
        body: BridgeCreate,
        foreign: dict[str, Any] | None = None,
        host_prefixes: Sequence[HostPrefix] = (),
        new: NewLink | None = None,
    ) -> tuple[Bridge, Operation]:
        """`foreign`: a host link of the new bridge's kernel name that is not ours (refused,
        409); `host_prefixes`: the host's addresses and connected routes now
        (check_addresses); `new`: its id, project and kernel name (NewLink.plan, as the API
        made it to ask the host about that name; planned here when not given)."""
        new = _new_link(self.session, self.caller, "bridge", body.name, body.project_id, new)
        _refuse_same_name(self.session, Bridge, new, body.name)
        QuotaGuard(self.session).charge(new.project_id, {Quota.BRIDGES: 1, Quota.SEGMENTS: 1})
        refuse_taken(self.session, new.ifname, foreign, self.scope)
        row = Bridge(
            id=new.id,
            project_id=new.project_id,
            name=body.name,
            ifname=new.ifname,
            stp=body.stp,
            forward_delay_cs=_delay_cs(body.stp, body.forward_delay),
            mtu=body.mtu,
            mac=body.mac,
            generated_mac=self._new_mac(),
            addresses=list(body.addresses),
            generation=1,
        )
        _check_link(row)
        _member_addresses(self.caller, row.addresses)
        check_addresses(  # row not added yet
            self.session, row, row.addresses, host_prefixes, scope=self.caller.scope
        )
        _claim_name(self.session, new.ifname, "bridge", row.id, self.scope)
        self.bridges.add(row)
        return row, record_operation(self.session, "create", "bridge", row, self.caller)

    def _new_mac(self) -> str:
        """A generated MAC no other bridge has (pinned or generated)."""
        taken = self.bridges.macs()
        for _ in range(100):
            mac = generate_mac()
            if mac not in taken:
                return mac
        raise Conflict("could not generate a MAC that no other bridge has")  # 2^46 of them

    def update(
        self, ref: str, body: BridgeUpdate, host_prefixes: Sequence[HostPrefix] = ()
    ) -> tuple[Bridge, Operation | None]:
        row = require_alive(self.bridges.find(ref, self.scope), "bridge", ref)
        assert isinstance(row, Bridge)
        changes = body.changes()
        added = _added(row.addresses, changes)
        own = own_addresses(self.session) if added else None  # before the change is applied
        if "forward_delay" in changes:  # null: the default for the stp after this change
            stp = changes.get("stp", row.stp)
            changes["forward_delay_cs"] = _delay_cs(stp, changes.pop("forward_delay"))
        elif (
            changes.get("stp")
            and stored_link_settings(row)[0]["forward_delay_cs"] < (STP_FORWARD_DELAY_CS[0])
        ):
            changes["forward_delay_cs"] = default_forward_delay_cs(True)
        if not _apply_changes(row, changes):
            return row, None
        _check_link(row)  # the result as a whole; the transaction rolls back if refused
        for tap in self.taps.on_bridge(row.id):
            _check_tap_follows(tap, row)
        _member_addresses(self.caller, added)
        check_addresses(self.session, row, added, host_prefixes, own, self.caller.scope)
        bump(row)
        return row, record_operation(self.session, "update", "bridge", row, self.caller)

    def delete(
        self, ref: str, force: bool = False, detach_taps: bool = False
    ) -> tuple[Bridge, Operation | None]:
        """Refused (409 in-use) while VM NICs, taps, a network or an uplink depend on the
        bridge, unless `force` (what it does to each: app.domain.dependents). The older
        `detach_taps` forces past attached taps only."""
        row = self.get(ref)
        if row.deleted:
            return row, None
        guard = InUseGuard(self.session, self.caller)
        if not force:
            guard.refuse(f"bridge {row.name!r}", guard.bridge_dependents(row, not detach_taps))
        guard.free_bridge(row)
        row.deleted = True
        bump(row, Status.DELETING)
        operation = record_operation(self.session, "delete", "bridge", row, self.caller)
        return row, guard.record(operation)


class TapService:
    def __init__(
        self,
        session: Session,
        caller: Caller = LOCAL_ADMIN,
        vlan_facts: VlanFacts | None = None,
        isolation_missing: str | None = None,
    ) -> None:
        """`vlan_facts`: the probed kernel's VLAN features, where the request names a VLAN
        (an unknown VLAN where none can exist: app.domain.segments VlanSegment.unknown);
        `isolation_missing`: why the probed kernel cannot isolate bridge ports (None: it
        can, or the request asks for no isolation)."""
        self.session = session
        self.caller = caller
        self.scope = caller.scope
        self.vlan_facts = vlan_facts
        self.isolation_missing = isolation_missing
        self.taps = TapRepository(session)
        self.bridges = BridgeRepository(session)

    def get(self, ref: str) -> Tap:
        row = self.taps.find(ref, self.scope)
        if row is None:
            raise NotFound(f"no tap {ref!r}")
        return row

    def page(
        self, limit: int, cursor: str | None, project: str | None = None
    ) -> tuple[Sequence[Tap], str | None]:
        """A page of the taps the caller sees (`project`: ?project=, list_scope)."""
        return self.taps.page(limit, cursor, list_scope(self.session, self.caller, project))

    def _bridge_id(self, ref: str | None) -> str | None:
        """The bridge `ref` a tap is to join untagged (404 unknown, 409 being deleted, 409
        when its segment refuses a tap: one never created)."""
        if ref is None:
            return None
        bridge = require_alive(find_bridge(self.session, ref, self.scope), "bridge", ref)
        join_port(self.session, Port(bridge.id), Joiner.TAP)
        return bridge.id

    def create(
        self,
        body: TapCreate,
        foreign: dict[str, Any] | None = None,
        host_prefixes: Sequence[HostPrefix] = (),
        new: NewLink | None = None,
    ) -> tuple[Tap, Operation]:
        """`foreign`: a host link of the new tap's kernel name that is not ours (refused,
        409); `host_prefixes`: the host's addresses and connected routes now
        (check_addresses); `new`: its id, project and kernel name (NewLink.plan, as the API
        made it to ask the host about that name; planned here when not given)."""
        _check_owner(self.caller, body.owner_uid, body.owner_gid)
        new = _new_link(self.session, self.caller, "tap", body.name, body.project_id, new)
        self.scope = create_scope(self.caller, new.project_id)
        _refuse_same_name(self.session, Tap, new, body.name)
        QuotaGuard(self.session).charge(new.project_id, {Quota.TAPS: 1})
        refuse_taken(self.session, new.ifname, foreign, self.scope)
        row = Tap(
            id=new.id,
            project_id=new.project_id,
            name=body.name,
            ifname=new.ifname,
            bridge_id=None,
            mtu=body.mtu,
            mac=body.mac,
            addresses=list(body.addresses),
            owner_uid=body.owner_uid,
            owner_gid=body.owner_gid,
            multi_queue=body.multi_queue,
            vnet_hdr=body.vnet_hdr,
            isolated=body.isolated,
            generation=1,
        )
        row.bridge_id, row.vlan_id = self._placement(body.bridge, body.vlan)
        self._check_tap(row)
        self._check_isolation(row, asked=body.isolated)
        _member_addresses(self.caller, row.addresses)
        check_addresses(  # row not added yet
            self.session, row, row.addresses, host_prefixes, scope=self.caller.scope
        )
        _claim_name(self.session, new.ifname, "tap", row.id, self.scope)
        self.taps.add(row)
        return row, record_operation(self.session, "create", "tap", row, self.caller)

    def create_for_port(
        self,
        project_id: str,
        ifname: str,
        bridge_ref: str | None,
        vlan_ref: str | None,
        foreign: dict[str, Any] | None = None,
    ) -> Tap:
        """The tap of a new port (app.services.network_ports), named `ifname` (its name and
        kernel name), on `bridge_ref` or VLAN `vlan_ref` as a tap resource would be: no
        quota or operation of its own (the port's). No owner: the daemon opens it for qemu
        and hands over the descriptors (app.host.netlink.open_tap_queues), as for tap
        resources, so no other process of the qemu user can open it."""
        self.scope = create_scope(self.caller, project_id)
        refuse_taken(self.session, ifname, foreign, self.scope)
        row = Tap(
            id=new_id(),
            project_id=project_id,
            name=ifname,
            ifname=ifname,
            bridge_id=None,
            addresses=[],
            generation=1,
        )
        row.bridge_id, row.vlan_id = self._placement(bridge_ref, vlan_ref)
        self._check_tap(row)
        _claim_name(self.session, ifname, "tap", row.id, self.scope)
        self.taps.add(row)
        return row

    def delete_for_port(self, row: Tap) -> None:
        """The tap of a port being deleted goes (the port's operation stands for it)."""
        row.deleted = True
        row.bridge_id = row.vlan_id = None
        row.isolated = False
        bump(row, Status.DELETING)

    def _refuse_port_tap(self, row: Tap) -> None:
        """A port's tap changes and goes with its port only (409 naming the port)."""
        port = PortRepository(self.session).of_tap(row.id)
        if port is not None:
            raise InUse(
                f"tap {row.name!r} is port {port.name!r}'s ({port.id}): change or delete the "
                "port (/v1/ports)",
                dependents=[Dependent(DependentKind.PORT, port.id, port.name).as_dict()],
            )

    def update(
        self, ref: str, body: TapUpdate, host_prefixes: Sequence[HostPrefix] = ()
    ) -> tuple[Tap, Operation | None]:
        row = require_alive(self.taps.find(ref, self.scope), "tap", ref)
        assert isinstance(row, Tap)
        self._refuse_port_tap(row)
        changes = body.changes()
        _check_owner(self.caller, changes.get("owner_uid"), changes.get("owner_gid"))
        added = _added(row.addresses, changes)
        own = own_addresses(self.session) if added else None  # before the change is applied
        if "bridge" in changes or "vlan" in changes:
            changes.update(self._moved(row, changes))
            if changes["bridge_id"] not in (None, row.bridge_id):
                self._refuse_routed(row)
            if changes["bridge_id"] is None and "isolated" not in changes:
                changes["isolated"] = False  # the port flag goes with the bridge port
        recreating = {"multi_queue", "owner_uid", "owner_gid"} & {
            key for key, value in changes.items() if getattr(row, key) != value
        }
        user = self._vm_using(row.id) if recreating else None
        if user is not None:
            raise InUse(
                f"tap {row.name!r} is used by VM {user}: changing {', '.join(sorted(recreating))} "
                "would re-create it under the VM"
            )
        if not _apply_changes(row, changes):
            return row, None
        self._check_tap(row)
        self._check_isolation(row, asked=changes.get("isolated") is True)
        _member_addresses(self.caller, added)
        check_addresses(self.session, row, added, host_prefixes, own, self.caller.scope)
        bump(row)
        return row, record_operation(self.session, "update", "tap", row, self.caller)

    def _placement(
        self, bridge_ref: str | None, vlan_ref: str | None
    ) -> tuple[str | None, str | None]:
        """(bridge id, VLAN id) of a tap on `bridge_ref` and/or VLAN `vlan_ref` (vlan_port)."""
        if vlan_ref is None:
            return self._bridge_id(bridge_ref), None
        bridge, vlan = vlan_port(self.session, bridge_ref, vlan_ref, self.vlan_facts, self.scope)
        assert vlan is not None
        join_port(self.session, Port(bridge.id, vlan.id), Joiner.TAP)  # a VLAN in error: 409
        # and the trunk as a bridge a tap joins, as always (a VLAN is made on none never
        # created, so this refuses nothing the VLAN's own rule lets through today). The
        # trunk is the one vlan_port found (the VLAN's, or the `bridge` named in the
        # caller's scope): not looked up again in the caller's scope, where a member's
        # tenant VLAN's trunk (the physnet's bridge, the default project's) is unknown
        require_alive(bridge, "bridge", bridge.id)
        join_port(self.session, Port(bridge.id), Joiner.TAP)
        return bridge.id, vlan.id

    def _moved(self, row: Tap, changes: dict[str, Any]) -> dict[str, str | None]:
        """A PATCH's `bridge` and `vlan` as columns. `vlan` null takes the tap off its VLAN
        (on its bridge still); a VLAN without `bridge` brings its trunk; another bridge
        alone takes the tap off its VLAN (a VLAN lives on one trunk)."""
        bridge_given = "bridge" in changes  # null: off any bridge, as `bridge` alone
        bridge_ref = changes.pop("bridge", None)
        if "vlan" in changes:
            vlan_ref = changes.pop("vlan")
            if vlan_ref is None:
                bridge_id = self._bridge_id(bridge_ref) if bridge_given else row.bridge_id
                return {"bridge_id": bridge_id, "vlan_id": None}
            bridge_id, vlan_id = self._placement(bridge_ref, vlan_ref)
            return {"bridge_id": bridge_id, "vlan_id": vlan_id}
        bridge_id = self._bridge_id(bridge_ref)
        stays = bridge_id is not None and bridge_id == row.bridge_id
        return {"bridge_id": bridge_id, "vlan_id": row.vlan_id if stays else None}

    def _check_tap(self, row: Tap) -> None:
        _check_link(row)
        bridge = self.bridges.get(row.bridge_id) if row.bridge_id else None
        if bridge is not None:
            _check_tap_follows(row, bridge)

    def _check_isolation(self, row: Tap, asked: bool) -> None:
        """An isolated tap is a bridge port (422 otherwise); asking for isolation where the
        kernel does not honour it is 409 host-lacks-feature."""
        require_bridge_port(row.isolated, row.bridge_id is not None, f"tap {row.name!r}")
        if asked:
            require_port_isolation(self.isolation_missing)

    def _refuse_routed(self, row: Tap) -> None:
        """A tap that carries a routed network is that network's link: on a bridge, the
        gateway address and dnsmasq would sit on a bridge port (the bridge takes the port's
        frames, so they never reach the tap's IP stack). 409 in-use naming the network."""
        network = NetworkRepository(self.session).of_object(row)
        if network is not None and not network.deleted:
            raise InUse(
                f"tap {row.name!r} carries routed network {network.name!r} and cannot join a "
                "bridge; delete the network first, or put the network on the bridge instead",
                dependents=[Dependent(DependentKind.NETWORK, network.id, network.name).as_dict()],
            )

    def _vm_using(self, tap_id: str) -> str | None:
        return VmRepository(self.session).tap_user(tap_id)

    def set_bridge(self, row: Tap, bridge_ref: str | None) -> Operation | None:
        self._refuse_port_tap(row)
        bridge_id = self._bridge_id(bridge_ref)
        if row.bridge_id == bridge_id:
            return None
        if bridge_id is not None:
            self._refuse_routed(row)
        row.bridge_id, row.vlan_id = bridge_id, None  # a VLAN lives on one trunk
        if bridge_id is None:
            row.isolated = False  # the port flag goes with the bridge port
        self._check_tap(row)
        bump(row)
        return record_operation(self.session, "update", "tap", row, self.caller)

    def attach(self, ref: str, bridge_ref: str | None) -> tuple[Tap, Operation | None]:
        row = require_alive(self.taps.find(ref, self.scope), "tap", ref)
        assert isinstance(row, Tap)
        return row, self.set_bridge(row, bridge_ref)

    def delete(self, ref: str, force: bool = False) -> tuple[Tap, Operation | None]:
        """Refused (409 in-use) while a VM NIC or a network uses the tap, unless `force`."""
        row = self.get(ref)
        if row.deleted:
            return row, None
        self._refuse_port_tap(row)  # also forced: the port would be left without its tap
        guard = InUseGuard(self.session, self.caller)
        if not force:
            guard.refuse(f"tap {row.name!r}", guard.tap_dependents(row))
        guard.free_tap(row)
        row.deleted = True
        row.bridge_id = row.vlan_id = None  # a tap on its way out holds no bridge, no VLAN
        bump(row, Status.DELETING)
        operation = record_operation(self.session, "delete", "tap", row, self.caller)
        return row, guard.record(operation)
