"""Neutron subnets <-> our managed networks (issue 12): reads scoped as the caller sees them,
and writes through the native NetworkService (validation, the `networks` quota, scoping,
operations and events are its own). The attribute mapping itself is pure:
app.services.neutron.subnets.

A subnet is a live managed network on a bridge or a VLAN (a Neutron network); one on a
routed tap is not in the Neutron view. A member sees its project's subnets and those on
segments shared with it (read only: a write there is 403, as Neutron's policy for another
project's shared network).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from app.db.models import Bridge, Network, Operation, Vlan
from app.db.repositories import (
    NetworkRepository,
    TagRepository,
    segment_subnets,
    subnets_on,
)
from app.db.session import Session
from app.domain.errors import InUse, InvalidInput
from app.domain.networks import HostPrefix
from app.domain.neutron import (
    NeutronConfig,
    NeutronError,
    check_revision,
    neutron_dependents,
    not_found,
    validate_tag,
)
from app.domain.segments import SegmentKind
from app.domain.tenancy import Caller
from app.domain.vlans import VlanFacts
from app.services.networks import NetworkService, network_blocking
from app.services.neutron.networks import SUBNET_RESOURCE, NeutronNetworks
from app.services.neutron.subnets import (
    network_create_from_subnet,
    network_update_from_subnet,
    subnet_view,
)
from app.services.scoping import create_project, shared_objects

RESOURCE = SUBNET_RESOURCE  # the tags' resource


class NeutronSubnets:
    def __init__(self, session: Session, caller: Caller, config: NeutronConfig) -> None:
        self.session = session
        self.caller = caller
        self.config = config

    # ---- reads ---------------------------------------------------------------------------

    def views(self) -> list[dict[str, Any]]:
        """Every subnet the caller sees as Neutron dicts, in creation order."""
        found = segment_subnets(self.session, self.caller.scope)
        if not self.caller.is_admin:
            seen = {row.id for row, _ in found}
            extra = subnets_on(self.session, self._shared_segment_ids())
            found += [(row, segment) for row, segment in extra if row.id not in seen]
            found.sort(key=lambda pair: (pair[0].created_at, pair[0].id))
        tags = TagRepository(self.session).by_resource(RESOURCE)
        return [subnet_view(row, segment, tags.get(row.id, [])) for row, segment in found]

    def view(self, subnet_id: str) -> dict[str, Any]:
        row = self.locate(subnet_id)
        tags = TagRepository(self.session).of(RESOURCE, row.id)
        return subnet_view(row, _segment_id(row), tags)

    def locate(self, subnet_id: str, write: bool = False) -> Network:
        """The managed network the id names, as the caller sees it: 404 SubnetNotFound for
        an unknown one, one on a routed tap, and another project's unless on a segment
        shared with the caller (then a write is 403)."""
        row = NetworkRepository(self.session).get(subnet_id)
        if row is None or row.deleted or not _segment_id(row):
            raise not_found(RESOURCE, subnet_id)
        if self.caller.scope.sees(row.project_id):
            return row
        if _segment_id(row) not in self._shared_segment_ids():
            raise not_found(RESOURCE, subnet_id)
        if write:
            raise NeutronError(
                403,
                "PolicyNotAuthorized",
                f"subnet {subnet_id} is on a network shared with this project: only its own "
                "project or an admin may change it",
            )
        return row

    def _shared_segment_ids(self) -> list[str]:
        project = self.caller.project_id
        return [
            obj.id
            for kind in ("bridge", "vlan")
            for obj in shared_objects(self.session, project, kind)
            if not obj.deleted
        ]

    # ---- writes --------------------------------------------------------------------------

    def segment_of(self, body: Mapping[str, Any]) -> Bridge | Vlan:
        """The network (bridge or VLAN) a create's `network_id` names, which the caller may
        write to: 404 NetworkNotFound for an unknown one (Neutron's answer, which the
        clients show), 403 for one shared with the caller."""
        project = body.get("project_id") or body.get("tenant_id")
        if isinstance(project, str):  # another project's, for a member: 404 as unknown
            create_project(self.session, self.caller, project)
        network_id = body.get("network_id")
        if not isinstance(network_id, str) or not network_id:
            raise InvalidInput(
                "Failed to parse request. Required attribute 'network_id' not specified"
            )
        return NeutronNetworks(self.session, self.caller, self.config).locate(network_id, True)

    def create(
        self,
        body: Mapping[str, Any],
        host_prefixes: Sequence[HostPrefix],
        facts: VlanFacts | None,
    ) -> tuple[Network, Operation]:
        """A managed network on the body's network (bridge or VLAN), in the body's project
        or else the network's (an admin adding a subnet to a member's network makes it the
        member's, as the network's addresses are). Its `tags` are stored with it."""
        segment = self.segment_of(body)
        kind = SegmentKind.VLAN if isinstance(segment, Vlan) else SegmentKind.BRIDGE
        existing = network_blocking(self.session, kind, segment.id)
        if existing is not None:  # before the name: an unnamed subnet's clash would hide it
            raise NeutronError(
                409,
                "Conflict",
                f"network {segment.id} already has subnet {existing.id} ({existing.name}): "
                "one IPv4 subnet per network here",
            )
        tags = _tags(body.get("tags"))
        model = network_create_from_subnet(body, kind)
        if model.project_id is None and self.caller.is_admin:
            model = model.model_copy(update={"project_id": segment.project_id})
        row, operation = NetworkService(self.session, self.caller, facts).create(
            model, host_prefixes
        )
        if tags:
            TagRepository(self.session).replace(RESOURCE, row.id, tags)
        return row, operation

    def update(
        self, subnet_id: str, body: Mapping[str, Any], revision: int | None
    ) -> tuple[Network, Operation | None]:
        row = self.locate(subnet_id, write=True)
        check_revision(revision, row.generation)
        model = network_update_from_subnet(body, row)
        return NetworkService(self.session, self.caller).update(row.id, model)

    def delete(self, subnet_id: str, revision: int | None) -> tuple[Network, Operation | None]:
        """Through the native delete, never forced: 409 SubnetInUse naming the ports and VM
        NICs with fixed addresses on it (and port forwards to them)."""
        row = self.locate(subnet_id, write=True)
        check_revision(revision, row.generation)
        try:
            deleted, operation = NetworkService(self.session, self.caller).delete(row.id)
        except InUse as exc:
            raise NeutronError(
                409,
                "SubnetInUse",
                f"Unable to complete operation on subnet {subnet_id}: One or more ports have "
                f"an IP allocation from this subnet: "
                f"{neutron_dependents(exc.extra.get('dependents'))}.",
            ) from None
        TagRepository(self.session).clear(RESOURCE, row.id)
        return deleted, operation


def _segment_id(row: Network) -> str:
    """The Neutron network_id of a managed network: its VLAN's or bridge's id ('' on a tap)."""
    return row.vlan_id or row.bridge_id or ""


def _tags(value: object) -> list[str]:
    """A create's `tags` (Neutron's tag-creation extension): a list of valid tags."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise NeutronError(400, "InvalidInput", f"Invalid input for tags. Reason: {value!r}")
    return sorted({validate_tag(t) for t in value})
