"""VLAN use cases: create on a trunk, rename, delete (rules: app.domain.vlans).

Creating a VLAN checks, in the caller's transaction, that its name is free (without regard
to case), that the trunk is one of our live bridges, that the VID is free on that trunk,
that the host can carry it (the backend chosen from the probed facts and the trunk's other
VLANs), and claims the kernel name a host address on the VLAN will use (and, with bridge_per_vlan,
the uplink's sub-interface); then it writes the row and an operation. The supervisor
releases the claims when it removes the row. Anything refused leaves nothing behind.

The VID is the request's `vlan_id` (a member's must lie in its project's VLAN ranges) or,
left out, the lowest id of the project's ranges that is free on the trunk
(app.services.quotas.choose_vid); these checks come before the host's kernel is asked
(host-lacks-feature), and the project's `vlans` quota is charged before either.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from app.db.models import Bridge, LinkName, Operation, Vlan, new_id
from app.db.repositories import (
    BridgeRepository,
    LinkNameRepository,
    TapRepository,
    VlanRepository,
    access_port_names,
    desired_port_vlans,
    never_created,
)
from app.db.session import Session
from app.domain.errors import BeingDeleted, Conflict, NameTaken, NotFound
from app.domain.tenancy import LOCAL_ADMIN, Caller, Quota
from app.domain.vlans import (
    TrunkNames,
    VlanBackend,
    VlanBridge,
    VlanFacts,
    choose_backend,
    l3_interface_name,
    subinterface_name,
    vlan_bridge_name,
)
from app.schemas.vlans import VlanCreate, VlanUpdate
from app.services.in_use import InUseGuard
from app.services.links import find_bridge, name_holder, refuse_foreign
from app.services.operations import record_operation
from app.services.quotas import QuotaGuard, choose_vid
from app.services.scoping import create_project, create_scope, list_scope


class VidTakenMeanwhile(Conflict):
    """The VLAN id chosen for a request without `vlan_id` (and whose kernel names the API
    asked the host about) was taken by another create before this one's transaction: the
    API chooses again (create_vlan retries)."""

    kind = "vlan-id-taken-meanwhile"
    title = "The chosen VLAN id was taken meanwhile"


def candidate_names(trunk: str, vid: int, uplink: str | None = None) -> list[str]:
    """The kernel names a VLAN with this VID on this trunk may claim (one per backend, and
    the uplink's sub-interface of bridge_per_vlan), so the API can ask the host about them
    before the transaction."""
    names = [subinterface_name(trunk, vid), vlan_bridge_name(trunk, vid)]
    return names + ([subinterface_name(uplink, vid)] if uplink is not None else [])


class VlanService:
    def __init__(self, session: Session, caller: Caller = LOCAL_ADMIN) -> None:
        self.session = session
        self.caller = caller
        self.scope = caller.scope
        self.vlans = VlanRepository(session)

    def get(self, ref: str) -> Vlan:
        row = self.vlans.find(ref, self.scope)
        if row is None:
            raise NotFound(f"no VLAN {ref!r}")
        return row

    def page(
        self, limit: int, cursor: str | None, project: str | None = None
    ) -> tuple[Sequence[Vlan], str | None]:
        """A page of the VLANs the caller sees (`project`: ?project=, list_scope)."""
        return self.vlans.page(limit, cursor, list_scope(self.session, self.caller, project))

    def trunks(self, rows: Sequence[Vlan]) -> dict[str, TrunkNames]:
        """Trunk bridge id -> its name, kernel name and uplink NIC's name (or None) for
        these VLANs."""
        return self.vlans.trunks(list({r.trunk_id for r in rows}))

    def vlan_bridges(self, trunk_ids: Sequence[str]) -> dict[str, list[VlanBridge]]:
        """Trunk id -> the own bridges of its bridge_per_vlan VLANs (by VID), whose ports
        and MAC tables the trunk's views include."""
        return self.vlans.vlan_bridges(trunk_ids)

    def planned_bridge_ports(self, trunk_id: str) -> dict[str, set[str]]:
        """Per-VLAN bridge name -> the ports kvmnetd plans in it: the VLAN's access taps (tap
        resources, VM NICs) and the trunk uplink's 802.1Q sub-interface."""
        bridges = self.vlans.vlan_bridges([trunk_id]).get(trunk_id, [])
        taps = access_port_names(self.session, [b.vlan_id for b in bridges])
        found = self.vlans.trunks([trunk_id]).get(trunk_id)
        uplink = found.uplink if found is not None else None
        return {
            b.bridge: taps[b.vlan_id]
            | ({subinterface_name(uplink, b.vid)} if uplink is not None else set())
            for b in bridges
        }

    def trunk_and_vid(self, ref: str) -> tuple[Bridge | None, int]:
        """A VLAN's trunk row (None once it is gone) and its VID; 404 for an unknown VLAN."""
        vlan = self.get(ref)
        return BridgeRepository(self.session).get(vlan.trunk_id), vlan.vlan_id

    def with_network(self, rows: Sequence[Vlan]) -> set[str]:
        """The ids of those of these VLANs that carry a live managed network."""
        return self.vlans.with_network([r.id for r in rows])

    def trunk_names(self, ref: str, project_id: str | None = None) -> tuple[str, str | None]:
        """The trunk's kernel name and its uplink NIC's (None without one), as a create in
        project `project_id` (its body's; None: the caller's) resolves `ref`."""
        self.scope = create_scope(
            self.caller, create_project(self.session, self.caller, project_id)
        )
        trunk = self.trunk(ref)
        names = self.vlans.trunks([trunk.id])[trunk.id]
        return names.ifname, names.uplink

    def trunk(self, ref: str) -> Bridge:
        """The trunk a VLAN may ride on: one of our bridges, alive and ever created; for a
        member, one of its project's or one shared with it (find_segment), any other is as
        unknown."""
        bridge = find_bridge(self.session, ref, self.scope)
        if bridge is None:
            if TapRepository(self.session).find(ref, self.scope) is not None:
                # the name is valid; what it names now is the wrong kind: a state conflict
                raise Conflict(
                    f"trunk {ref!r} is a tap: a VLAN rides on a bridge (its trunk), and a "
                    "tap joins a VLAN as a port instead"
                )
            raise NotFound(f"no bridge {ref!r} to be the trunk")
        if bridge.deleted:
            raise BeingDeleted(f"bridge {bridge.name!r} is being deleted")
        if never_created(bridge):
            raise Conflict(
                f"bridge {bridge.name!r} was never created ({bridge.status_reason}); it "
                "cannot be a trunk"
            )
        return bridge

    def next_vid(self, trunk_ref: str, project_id: str | None = None) -> int:
        """The VID a create on this trunk without `vlan_id` in project `project_id` (its
        body's; None: the caller's) would get now (what the API asks the host about before
        the create's transaction)."""
        project = create_project(self.session, self.caller, project_id)
        self.scope = create_scope(self.caller, project)
        trunk = self.trunk(trunk_ref)
        return choose_vid(self.session, project, self.caller.principal, trunk.id, trunk.name, None)

    def create(
        self,
        body: VlanCreate,
        facts: VlanFacts,
        foreign: Mapping[str, dict[str, Any] | None] | None = None,
        probed_vid: int | None = None,
    ) -> tuple[Vlan, Operation]:
        """`facts`: what the host's kernel offers (probed); `foreign`: for the kernel names
        of candidate_names(), the host link of that name that is not ours, if any;
        `probed_vid`: without `vlan_id`, the VID `foreign` was asked for (next_vid): another
        one chosen now is VidTakenMeanwhile."""
        project_id = create_project(self.session, self.caller, body.project_id)
        self.scope = create_scope(self.caller, project_id)
        self._refuse_name_taken(body.name, project_id)
        QuotaGuard(self.session).charge(project_id, {Quota.VLANS: 1, Quota.SEGMENTS: 1})
        trunk = self.trunk(body.trunk)
        vid = choose_vid(
            self.session, project_id, self.caller.principal, trunk.id, trunk.name, body.vlan_id
        )
        if body.vlan_id is None and probed_vid is not None and vid != probed_vid:
            raise VidTakenMeanwhile(
                f"VLAN id {probed_vid} on trunk {trunk.name!r} was taken while this request "
                f"ran; {vid} is the next free one: send the request again"
            )
        on_trunk = self.vlans.on_trunk(trunk.id)
        holder = self.vlans.holding(trunk.id, vid)
        if holder is not None and not self.scope.sees(holder.project_id):
            raise Conflict(f"VLAN {vid} on trunk {trunk.name!r} is taken")
        if holder is not None:
            state = " (being deleted)" if holder.deleted else ""
            raise Conflict(
                f"VLAN {vid} on trunk {trunk.name!r} is VLAN {holder.name!r}{state}",
                holder={"id": holder.id, "name": holder.name},
            )
        trunk_backend = VlanBackend(on_trunk[0].backend) if on_trunk else None
        backend = choose_backend(body.backend, facts, trunk_backend)
        row = Vlan(
            id=new_id(),
            project_id=project_id,
            name=body.name,
            vlan_id=vid,
            trunk_id=trunk.id,
            backend=backend.value,
            requested_backend=body.backend.value,
            description=body.description,
            observed_objects=[],
            generation=1,
        )
        self._claim(l3_interface_name(backend, trunk.ifname, vid), row.id, foreign or {})
        uplink = self.vlans.trunks([trunk.id])[trunk.id].uplink
        if backend is VlanBackend.BRIDGE_PER_VLAN and uplink is not None:
            # the uplink's sub-interface is the VLAN's too (an uplink set later: its own
            # service claims it; until then the supervisor's create fails on a foreign one)
            self._claim(subinterface_name(uplink, vid), row.id, foreign or {})
        self.vlans.add(row)
        return row, record_operation(self.session, "create", "vlan", row, self.caller)

    def _refuse_name_taken(self, name: str, project_id: str, except_id: str | None = None) -> None:
        holder = self.vlans.name_holder(name, project_id, except_id)
        if holder is not None:
            raise NameTaken(
                f"VLAN {holder.name!r} ({holder.id}) has this name: VLAN names are unique "
                "within a project without regard to case"
            )

    def _claim(self, name: str, vlan_id: str, foreign: Mapping[str, dict[str, Any] | None]) -> None:
        """Claim the kernel name of the VLAN's L3 interface, so no bridge, tap or other VLAN
        takes it (the uplink's sub-interface follows the uplink and is not claimed here)."""
        refuse_foreign(name, foreign.get(name))
        names = LinkNameRepository(self.session)
        existing = names.get(name)
        if existing is not None:
            raise NameTaken(
                f"the VLAN's kernel link name {name!r} is taken: it is "
                f"{name_holder(self.session, existing, self.scope)}"
            )
        names.add(LinkName(name=name, resource="vlan", resource_id=vlan_id))

    def update(self, ref: str, body: VlanUpdate) -> tuple[Vlan, list[str]]:
        """Name and description are the API's own: no kernel object changes, so nothing is
        bumped and no operation is recorded (the answer is 200 at once). Returns the row and
        the fields whose value changed (the `vlan.updated` event names them; none: no event)."""
        row = self.get(ref)
        if row.deleted:
            raise BeingDeleted(f"VLAN {row.name!r} is being deleted")
        changes = body.changes()
        if "name" in changes and changes["name"] != row.name:
            self._refuse_name_taken(changes["name"], row.project_id, except_id=row.id)
        changed = [field for field, value in changes.items() if getattr(row, field) != value]
        for field in changed:
            setattr(row, field, changes[field])
        return row, changed

    def planned_ports(self, trunk_id: str, default_pvid: int) -> dict[str, dict[int, Any]]:
        """What the supervisor plans for the trunk's ports (port -> VID -> Membership)."""
        return {
            port: dict(members)
            for port, members in desired_port_vlans(self.session, trunk_id, default_pvid).items()
        }

    def delete(self, ref: str, force: bool = False) -> tuple[Vlan, Operation | None]:
        """Refused (409 in-use) while VM NICs or taps use the VLAN, unless `force` (what it
        does to each: app.domain.dependents); the row goes once the supervisor removed its
        kernel objects."""
        row = self.get(ref)
        if row.deleted:
            return row, None
        guard = InUseGuard(self.session, self.caller)
        if not force:
            guard.refuse(f"VLAN {row.name!r}", guard.vlan_dependents(row))
        guard.free_vlan(row)
        return row, guard.record(guard.delete_vlan(row))
