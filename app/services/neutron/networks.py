"""Neutron networks <-> our L2 segments (issue 12, the lead's design): a network is one of
our bridges or one of our VLANs, its id that row's id.

- a VLAN row: provider:network_type `vlan`, segmentation_id its VID, physical_network the
  physnet whose bridge is its trunk (None if none is);
- a bridge whose kernel name is a configured physnet's bridge: `flat` on that physnet;
- any other bridge: `local`.

Creates, changes and deletes go through the native services (BridgeService, VlanService):
validation, quotas, scoping, operations and events are theirs. What Neutron adds here:
the type decision (provider attributes, settings tenant_network_type), `brq` kernel names
for `local` bridges, renames, If-Match revisions, and Neutron's error types.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from app.db.models import Bridge, Network, Operation, Vlan, new_id
from app.db.repositories import (
    BridgeRepository,
    NetworkRepository,
    ProjectRepository,
    TagRepository,
    VlanRepository,
    bridge_mtus,
    live_segments,
    segment_networks,
    shared_segment_ids,
)
from app.db.session import Session
from app.domain.dependents import Dependent, DependentKind, ForceAction
from app.domain.errors import InUse, InvalidInput, NameTaken
from app.domain.names import neutron_bridge_ifname, validate_link_name
from app.domain.neutron import (
    NetworkType,
    NeutronBadRequest,
    NeutronConfig,
    NeutronError,
    check_revision,
    neutron_dependents,
    not_found,
    timestamp,
    validate_tag,
)
from app.domain.status import Status
from app.domain.tenancy import DEFAULT_PROJECT_ID, LOCAL_ADMIN, Caller, Scope
from app.domain.vlans import VlanFacts, no_vlan_can_exist
from app.schemas.links import BridgeCreate, BridgeUpdate
from app.schemas.neutron import NeutronNetworkCreate, NeutronNetworkUpdate
from app.schemas.vlans import VlanCreate
from app.services.links import BridgeService, NewLink
from app.services.networks import NetworkService
from app.services.operations import bump, record_operation
from app.services.port_security import default_port_security
from app.services.scoping import create_project, shared_objects
from app.services.vlans import VlanService

RESOURCE = "network"  # the tags' resource
SUBNET_RESOURCE = "subnet"  # a subnet's tags' (its network's delete clears them)
DEFAULT_MTU = 1500  # a bridge made without an MTU (app.schemas.links BRIDGE_MTU)
STATUS = {
    Status.ACTIVE.value: "ACTIVE",
    Status.PENDING.value: "BUILD",
    Status.ERROR.value: "ERROR",
    Status.DELETING.value: "DOWN",
}
PROVIDER_ATTRIBUTES = (
    "provider:network_type",
    "provider:physical_network",
    "provider:segmentation_id",
)

Segment = Bridge | Vlan
Deleted = tuple[Segment | Network, Operation | None]  # a row a delete marked, its operation


@dataclass(frozen=True)
class CreatePlan:
    """What a create makes: its type, physnet and VID, its project, and for a bridge the
    NewLink (id, kernel name) whose name the API asks the host about first."""

    network_type: NetworkType
    physnet: str | None
    segment: int | None
    project_id: str
    new: NewLink | None


class NeutronNetworks:
    def __init__(self, session: Session, caller: Caller, config: NeutronConfig) -> None:
        self.session = session
        self.caller = caller
        self.config = config

    # ---- reads ---------------------------------------------------------------------------

    def views(self) -> list[dict[str, Any]]:
        """Every network the caller sees as Neutron dicts: an admin's every project's, a
        member's its project's and those shared with it (its shared_segments)."""
        bridges, vlans = live_segments(self.session, self.caller.scope)
        rows: list[Segment] = [*bridges, *vlans]
        if not self.caller.is_admin:
            seen = {r.id for r in rows}
            for kind in ("bridge", "vlan"):
                for obj in shared_objects(self.session, self.caller.project_id, kind):
                    if obj.id not in seen and isinstance(obj, Bridge | Vlan) and not obj.deleted:
                        rows.append(obj)
        rows.sort(key=lambda r: (r.created_at, r.id))  # creation order, as native lists
        return self._present(rows)

    def view(self, network_id: str) -> dict[str, Any]:
        return self._present([self.locate(network_id)])[0]

    def locate(self, network_id: str, write: bool = False) -> Segment:
        """The bridge or VLAN the id names, as the caller sees it: 404 NetworkNotFound for
        an unknown one and another project's (unless shared with the caller: then a write
        is 403)."""
        row: Segment | None = BridgeRepository(self.session).get(network_id)
        row = row if row is not None else VlanRepository(self.session).get(network_id)
        if row is None or row.deleted:
            raise not_found(RESOURCE, network_id)
        if self.caller.scope.sees(row.project_id):
            return row
        kind = "bridge" if isinstance(row, Bridge) else "vlan"
        shared = {o.id for o in shared_objects(self.session, self.caller.project_id, kind)}
        if row.id not in shared:
            raise not_found(RESOURCE, network_id)
        if write:
            raise NeutronError(
                403,
                "PolicyNotAuthorized",
                f"network {network_id} is shared with this project: "
                "only its own project or an admin may change it",
            )
        return row

    def _present(self, rows: Sequence[Segment]) -> list[dict[str, Any]]:
        subnets = segment_networks(self.session)
        shared = shared_segment_ids(self.session)
        tags = TagRepository(self.session).of_each(RESOURCE, [r.id for r in rows])
        trunks = bridge_mtus(self.session, [r.trunk_id for r in rows if isinstance(r, Vlan)])
        trunk_names = self._trunk_ifnames([r.trunk_id for r in rows if isinstance(r, Vlan)])
        views = []
        for row in rows:
            provider: tuple[str, str | None, int | None]
            if isinstance(row, Vlan):
                mtu = trunks.get(row.trunk_id)
                physnet = self.config.physnet_of_bridge(trunk_names.get(row.trunk_id, ""))
                provider = (NetworkType.VLAN.value, physnet, row.vlan_id)
                description = row.description or ""
            else:
                mtu = row.mtu
                physnet = self.config.physnet_of_bridge(row.ifname)
                kind = NetworkType.FLAT if physnet is not None else NetworkType.LOCAL
                provider = (kind.value, physnet, None)
                description = ""
            view: dict[str, Any] = {
                "id": row.id,
                "name": row.name,
                "description": description,
                "status": STATUS.get(row.status, "ERROR"),
                "admin_state_up": True,
                "shared": row.id in shared,
                "subnets": subnets.get(row.id, []),
                "mtu": mtu if isinstance(mtu, int) else DEFAULT_MTU,
                "project_id": row.project_id,
                "tenant_id": row.project_id,
                "revision_number": row.generation,
                "tags": tags.get(row.id, []),
                "created_at": timestamp(row.created_at),
                "updated_at": timestamp(row.updated_at),
                "router:external": False,
                # what a port made on it gets by default (app.services.port_security)
                "port_security_enabled": default_port_security(row.project_id),
            }
            if self.caller.is_admin:  # Neutron's policy: provider attributes for admins
                view.update(zip(PROVIDER_ATTRIBUTES, provider, strict=True))
            views.append(view)
        return views

    def _trunk_ifnames(self, ids: Sequence[str]) -> dict[str, str]:
        bridges = BridgeRepository(self.session)
        found = {i: bridges.get(i) for i in set(ids)}
        return {i: b.ifname for i, b in found.items() if b is not None}

    # ---- create --------------------------------------------------------------------------

    def plan_create(self, body: NeutronNetworkCreate, facts: VlanFacts) -> CreatePlan:
        """Which segment a create makes (the design's mapping), before the host is asked
        about its kernel name."""
        given = (
            body.provider_network_type,
            body.provider_physical_network,
            body.provider_segmentation_id,
        )
        if any(value is not None for value in given) and not self.caller.is_admin:
            raise NeutronError(
                403, "PolicyNotAuthorized", "provider:* attributes are for admins only"
            )
        if body.shared and not self.caller.is_admin:
            raise NeutronError(403, "PolicyNotAuthorized", "shared is for admins only")
        if body.name is None:  # Neutron's name is optional
            body.name = f"net-{new_id().replace('-', '')[:8]}"
        if body.router_external:
            raise NeutronBadRequest("router:external true is not supported (no routers here)")
        for tag in body.tags or ():
            validate_tag(tag)
        if not body.admin_state_up:
            raise NeutronBadRequest("admin_state_up false is not supported (a segment is up)")
        if body.project_id and body.tenant_id and body.project_id != body.tenant_id:
            raise NeutronBadRequest("project_id and tenant_id name different projects")
        project_id = create_project(self.session, self.caller, body.project_id or body.tenant_id)
        default = default_port_security(project_id)
        if body.port_security_enabled is not None and body.port_security_enabled != default:
            raise NeutronBadRequest(
                f"port_security_enabled is each port's here; a network of this project "
                f"shows its ports' default ({str(default).lower()}): set it on the ports"
            )
        network_type = self._network_type(body.provider_network_type, facts)
        if network_type is NetworkType.VLAN and body.mtu is not None:
            raise NeutronBadRequest("a vlan network's MTU is its trunk's: omit mtu")
        physnet = body.provider_physical_network
        if network_type is NetworkType.LOCAL:
            if physnet is not None or body.provider_segmentation_id is not None:
                raise NeutronBadRequest("a local network has no physical network or segment")
            self._link_name(body.name)
            self._no_description(body)
            row_id = new_id()
            new = NewLink("bridge", row_id, project_id, neutron_bridge_ifname(row_id))
            return CreatePlan(network_type, None, None, project_id, new)
        if physnet is None:
            physnet = self.config.tenant_physnet()
            if physnet is None:
                raise NeutronBadRequest(
                    f"a {network_type} network needs provider:physical_network (no physical "
                    "network is configured: settings physical_networks)"
                )
        bridge = self.config.bridge_of(physnet)
        if network_type is NetworkType.FLAT:
            if body.provider_segmentation_id is not None:
                raise NeutronBadRequest("a flat network has no segmentation id")
            if project_id != DEFAULT_PROJECT_ID:
                raise NeutronBadRequest(
                    "a flat network is its physical network's bridge, which is the default "
                    "project's (settings physical_networks): name no other project"
                )
            self._no_description(body)
            self._link_name(body.name)
            holder = BridgeRepository(self.session).with_ifname(bridge)
            if holder is not None:
                raise NeutronError(
                    409,
                    "FlatNetworkInUse",
                    f"Unable to create the flat network. Physical network {physnet} is in use "
                    f"(its bridge {bridge} is network {holder.id}).",
                )
            new = NewLink("bridge", new_id(), DEFAULT_PROJECT_ID, bridge)
            return CreatePlan(network_type, physnet, None, DEFAULT_PROJECT_ID, new)
        return CreatePlan(network_type, physnet, body.provider_segmentation_id, project_id, None)

    def _network_type(self, asked: str | None, facts: VlanFacts) -> NetworkType:
        """The asked provider:network_type, or the tenant type; a vlan one where the host
        can carry no VLAN is 400 naming the kernel options (the 409 of /v1/vlans, as a
        Neutron client's bad request)."""
        refusal = no_vlan_can_exist(facts, "")
        if asked is None:
            chosen = self.config.tenant_type(host_carries_vlans=refusal is None)
        else:
            try:
                chosen = NetworkType(asked)
            except ValueError:
                known = ", ".join(t.value for t in NetworkType)
                raise NeutronBadRequest(
                    f"provider:network_type {asked!r} is not supported (supported: {known})"
                ) from None
        if chosen is NetworkType.VLAN and refusal is not None:
            raise NeutronBadRequest(
                "a vlan network cannot exist on this host: "
                + refusal.detail.split(": ", 1)[-1]
                + " (create a flat or local network instead)"
            )
        return chosen

    @staticmethod
    def _no_description(body: NeutronNetworkCreate) -> None:
        if body.description:
            raise NeutronBadRequest("a bridge-backed (local, flat) network keeps no description")

    def _link_name(self, name: str) -> None:
        try:
            validate_link_name(name)
        except InvalidInput as exc:
            raise NeutronBadRequest(
                f"a bridge-backed network's name is a link name: {exc}"
            ) from None

    def create(
        self,
        plan: CreatePlan,
        body: NeutronNetworkCreate,
        foreign: dict[str, Any] | None,
        facts: VlanFacts,
    ) -> tuple[Segment, Operation]:
        """Writes the plan through the native services (same transaction)."""
        if plan.new is not None:
            # a flat network's bridge is the physnet's, in the default project (settings
            # physical_networks); a local one's in the project the create names
            bridge_body = BridgeCreate.model_validate(
                {"name": body.name, "project_id": plan.project_id, "mtu": body.mtu}
            )
            row: Segment
            row, operation = self._create_bridge(bridge_body, plan.new, foreign)
        else:
            row, operation = self._create_vlan(plan, body, facts)
        if body.shared:
            self._share(row, True)
        if body.tags:
            TagRepository(self.session).replace(RESOURCE, row.id, body.tags)
        return row, operation

    def _create_bridge(
        self, body: BridgeCreate, new: NewLink, foreign: dict[str, Any] | None
    ) -> tuple[Bridge, Operation]:
        # a `brq`/physnet kernel name is no claim on the name (in the default project the
        # native create relies on that claim): the name is looked up here
        if BridgeRepository(self.session).name_holder(body.name, new.project_id) is not None:
            raise NeutronError(
                409, "Conflict", f"this project already has a network named {body.name!r}"
            )
        try:
            return BridgeService(self.session, self.caller).create(body, foreign, (), new)
        except NameTaken as exc:
            raise NeutronError(409, "Conflict", exc.detail) from None

    def _create_vlan(
        self, plan: CreatePlan, body: NeutronNetworkCreate, facts: VlanFacts
    ) -> tuple[Vlan, Operation]:
        """A VLAN on the physnet's bridge, which is made first when absent: in the default
        project, by the daemon for the operator's configuration (settings
        physical_networks), whoever asks (a member's first tenant network makes it too).
        Proven in the kernel tier (tests/kernel/nested/test_neutron_vlans.py)."""
        assert plan.physnet is not None
        ifname = self.config.bridge_of(plan.physnet)
        trunk = BridgeRepository(self.session).with_ifname(ifname)
        if trunk is None:
            new = NewLink("bridge", new_id(), DEFAULT_PROJECT_ID, ifname)
            made = BridgeCreate.model_validate({"name": ifname, "project_id": DEFAULT_PROJECT_ID})
            trunk, _ = BridgeService(self.session, LOCAL_ADMIN).create(made, None, (), new)
            self.session.flush()
        vlan = VlanCreate.model_validate(
            {
                "name": body.name,
                "vlan_id": plan.segment,
                "trunk": trunk.id,
                "description": body.description,
                "project_id": plan.project_id,
            }
        )
        return PhysnetVlans(self.session, self.caller, trunk.id).create(vlan, facts)

    # ---- update, delete -------------------------------------------------------------------

    def update(
        self, network_id: str, body: NeutronNetworkUpdate, revision: int | None
    ) -> tuple[Segment, Operation | None]:
        row = self.locate(network_id, write=True)
        check_revision(revision, row.generation)
        changes = body.model_dump(exclude_unset=True)
        if changes.get("admin_state_up") is False:
            raise NeutronBadRequest("admin_state_up false is not supported (a segment is up)")
        # an MTU goes through the native bridge update (its checks, its bump and operation)
        operation = self._set_mtu(row, changes["mtu"]) if "mtu" in changes else None
        changed = False
        if changes.get("name") is not None and changes["name"] != row.name:
            self._rename(row, changes["name"])
            changed = True
        if "description" in changes and changes["description"] != self._description(row):
            if not isinstance(row, Vlan):
                raise NeutronBadRequest("a bridge-backed network keeps no description")
            row.description = changes["description"] or None
            changed = True
        if changes.get("shared") is not None:
            if not self.caller.is_admin:
                raise NeutronError(403, "PolicyNotAuthorized", "shared is for admins only")
            changed = self._share(row, changes["shared"]) or changed
        if not changed or operation is not None:
            return row, operation
        bump(row)
        kind = "bridge" if isinstance(row, Bridge) else "vlan"
        return row, record_operation(self.session, "update", kind, row, self.caller)

    def _set_mtu(self, row: Segment, mtu: int) -> Operation | None:
        """A bridge-backed network's MTU is its bridge's: changed by the native bridge
        update (PATCH /v1/bridges: its checks, bump and operation); None when unchanged."""
        if not isinstance(row, Bridge):
            raise NeutronBadRequest("a vlan network's MTU is its trunk's: change the trunk's")
        return BridgeService(self.session, self.caller).update(
            row.id, BridgeUpdate.model_validate({"mtu": mtu})
        )[1]

    @staticmethod
    def _description(row: Segment) -> str:
        return (row.description or "") if isinstance(row, Vlan) else ""

    def _rename(self, row: Segment, name: str) -> None:
        """A new name (unique in the project: 409). The kernel name stays (fixed at
        creation), so a bridge's name is a link name still, for its views' sake."""
        holder: Segment | None
        if isinstance(row, Bridge):
            self._link_name(name)
            holder = BridgeRepository(self.session).name_holder(name, row.project_id, row.id)
        else:
            holder = VlanRepository(self.session).name_holder(name, row.project_id, row.id)
        if holder is not None:
            raise NeutronError(
                409, "Conflict", f"this project already has a network named {name!r}"
            )
        row.name = name

    def _share(self, row: Segment, shared: bool) -> bool:
        """shared true lists the segment in every other project's shared_segments (where
        their NICs may attach; a project made later does not get it), false removes it from
        all. True when anything changed."""
        kind = "bridge" if isinstance(row, Bridge) else "vlan"
        entry = {"resource": kind, "id": row.id}
        changed = False
        for project in ProjectRepository(self.session).all():
            entries = [e for e in project.shared_segments or [] if e != entry]
            if shared and project.id != row.project_id:
                entries.append(entry)
            if entries != (project.shared_segments or []):
                project.shared_segments = entries
                changed = True
        return changed

    def delete(self, network_id: str, revision: int | None) -> list[Deleted]:
        """Through the native deletes, never forced: its subnet goes with it, as Neutron's
        network delete takes the subnets no port has an address of (our managed network,
        refused while VM NICs or ports hold fixed addresses on it or port forwards use it);
        409 NetworkInUse naming the dependents (VM NICs, taps, ports, fixed addresses)
        otherwise, and then nothing is deleted (one transaction). What was deleted, each
        with its operation, the subnet first (the API waits for each to settle)."""
        row = self.locate(network_id, write=True)
        check_revision(revision, row.generation)
        deleted: list[Deleted] = []
        try:
            subnet = self._delete_subnet(row)
            if subnet is not None:
                deleted.append(subnet)
            if isinstance(row, Bridge):
                deleted.append(BridgeService(self.session, self.caller).delete(row.id))
            else:
                deleted.append(VlanService(self.session, self.caller).delete(row.id))
        except InUse as exc:
            raise NeutronError(
                409,
                "NetworkInUse",
                f"Unable to complete operation on network {network_id}. There are one or more "
                f"subnets or ports still in use on the network (delete them first): "
                f"{neutron_dependents(exc.extra.get('dependents'))}.",
            ) from None
        TagRepository(self.session).clear(RESOURCE, row.id)
        operation = deleted[-1][1]
        if operation is not None and subnet is not None:  # recorded as a forced delete's
            gone = Dependent(DependentKind.NETWORK, subnet[0].id, subnet[0].name)
            operation.detached = [replace(gone, action=ForceAction.DELETED).as_dict()]
        return deleted

    def _delete_subnet(self, row: Segment) -> tuple[Network, Operation | None] | None:
        """The segment's managed network (its subnet) deleted, refused (InUse) while fixed
        addresses or port forwards use it; None when it has none."""
        subnet = NetworkRepository(self.session).of_object(row)
        if subnet is None or subnet.deleted:
            return None
        TagRepository(self.session).clear(SUBNET_RESOURCE, subnet.id)
        return NetworkService(self.session, self.caller).delete(subnet.id)


class PhysnetVlans(VlanService):
    """The VLAN service for a Neutron `vlan` network: its trunk is the physical network's
    bridge, the default project's (settings physical_networks), which a member's tenant
    network rides on too (Neutron: a physnet is the operator's, every project's segments
    use it). The native service resolves a trunk in the caller's scope, where a member does
    not see that bridge; everything else (VID ranges, quotas, names) stays the caller's."""

    def __init__(self, session: Session, caller: Caller, physnet_trunk_id: str) -> None:
        super().__init__(session, caller)
        self.physnet_trunk_id = physnet_trunk_id

    def trunk(self, ref: str) -> Bridge:
        if ref != self.physnet_trunk_id:
            return super().trunk(ref)
        scope = self.scope
        self.scope = Scope(None, scope.home)  # every project's, names still the caller's
        try:
            return super().trunk(ref)
        finally:
            self.scope = scope
