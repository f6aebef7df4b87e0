"""Uplink use cases: give a bridge an uplink (a host NIC) or take it away. The move itself is
the supervisor's (app.supervisor.uplinks); here the desired state and an operation are
written in the caller's transaction.

An uplink set on a trunk that already carries bridge_per_vlan VLANs brings each one's
802.1Q sub-interface `<uplink>.<vid>` (app.domain.vlans.kernel_objects): its name is claimed
for the VLAN here, and refused (409) when a host link kvmnetd does not own or another of our
resources holds it. The supervisor releases the claims when the uplink's row goes."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

from app.db.models import Bridge, LinkName, Operation, Tap, Uplink, new_id
from app.db.repositories import (
    BridgeRepository,
    LinkNameRepository,
    TapRepository,
    UplinkRepository,
    never_created,
    uplink_of,
    uplink_subinterfaces,
    uplinks_of,
)
from app.db.session import Session
from app.domain.errors import BeingDeleted, Conflict, InvalidInput, NameTaken, NotFound
from app.domain.status import Status
from app.domain.tenancy import LOCAL_ADMIN, Caller
from app.schemas.uplinks import UplinkSet
from app.services.links import name_holder, refuse_foreign, require_alive
from app.services.operations import bump, record_operation


class UplinkService:
    def __init__(self, session: Session, caller: Caller = LOCAL_ADMIN) -> None:
        self.session = session
        self.caller = caller
        self.scope = caller.scope

    def bridge(self, ref: str) -> Bridge:
        row = require_alive(BridgeRepository(self.session).find(ref, self.scope), "bridge", ref)
        assert isinstance(row, Bridge)
        return row

    def get(self, bridge_ref: str) -> tuple[Bridge, Uplink]:
        bridge = BridgeRepository(self.session).find(bridge_ref, self.scope)
        if bridge is None:
            raise NotFound(f"no bridge {bridge_ref!r}")
        row = uplink_of(self.session, bridge.id)
        if row is None:
            raise NotFound(f"bridge {bridge.name!r} has no uplink")
        return bridge, row

    def of_bridges(self, bridge_ids: Sequence[str]) -> dict[str, Uplink]:
        """Bridge id -> its uplink, for those of these bridges that have one."""
        return uplinks_of(self.session, bridge_ids)

    def all(self) -> list[tuple[str, Uplink]]:
        """Every uplink with its bridge's kernel name (ifname)."""
        return UplinkRepository(self.session).with_bridge_names()

    def check(self, bridge_ref: str, body: UplinkSet) -> Bridge:
        """Everything that can be refused without looking at the host."""
        bridge = self.bridge(bridge_ref)
        if body.probe_address is not None:
            try:
                ipaddress.ip_address(body.probe_address)
            except ValueError:
                raise InvalidInput(
                    f"probe_address {body.probe_address!r} is not an IP address"
                ) from None
        claimed = LinkNameRepository(self.session).get(body.interface)
        if claimed is not None and not self._stands_for_no_link(claimed):
            raise Conflict(
                f"{body.interface} is a link of kvmnetd ({name_holder(self.session, claimed)}), "
                "not a host NIC"
            )
        other = UplinkRepository(self.session).on_interface(body.interface)
        if other is not None and other.bridge_id != bridge.id:
            holder = BridgeRepository(self.session).get(other.bridge_id)
            named = f"{holder.name!r} ({holder.id})" if holder else other.bridge_id
            raise Conflict(f"{body.interface} is already the uplink of bridge {named}")
        return bridge

    def _stands_for_no_link(self, claimed: LinkName) -> bool:
        """A bridge or tap row that never got its kernel link does not make the host link
        of that name (eth0) ours."""
        row: Bridge | Tap | None = None
        if claimed.resource == "bridge":
            row = BridgeRepository(self.session).get(claimed.resource_id)
        elif claimed.resource == "tap":
            row = TapRepository(self.session).get(claimed.resource_id)
        return row is not None and never_created(row)

    def subinterface_names(self, bridge_ref: str, interface: str) -> list[str]:
        """The `<interface>.<vid>` names the bridge's bridge_per_vlan VLANs would own with
        this uplink, so the API can ask the host about them before the transaction."""
        bridge = self.bridge(bridge_ref)
        return [name for name, _ in uplink_subinterfaces(self.session, bridge.id, interface)]

    def set(
        self,
        bridge_ref: str,
        body: UplinkSet,
        foreign: Mapping[str, dict[str, Any] | None] | None = None,
    ) -> tuple[Uplink, Operation | None]:
        """`foreign`: for the names of subinterface_names(), the host link of that name
        that is not ours, if any."""
        bridge = self.check(bridge_ref, body)
        row = uplink_of(self.session, bridge.id)
        if row is not None and row.deleted:
            raise BeingDeleted(f"the uplink of {bridge.name} is being removed; try again")
        if row is not None and row.name != body.interface:
            raise Conflict(
                f"bridge {bridge.name} already has the uplink {row.name}; remove it first"
            )
        settings = {
            "probe_address": body.probe_address,
            "probe_timeout": body.probe_timeout,
            "take_mac": body.take_mac,
            "dhcp": body.dhcp,
        }
        if row is None:
            row = Uplink(
                id=new_id(),
                project_id=bridge.project_id,  # the bridge's project: it is part of it
                name=body.interface,
                bridge_id=bridge.id,
                generation=1,
            )
            for key, value in settings.items():
                setattr(row, key, value)
            self._claim_subinterfaces(bridge, body.interface, foreign or {})
            self.session.add(row)
            return row, record_operation(self.session, "create", "uplink", row, self.caller)
        changed = any(getattr(row, key) != value for key, value in settings.items())
        if not changed and row.status != Status.ERROR.value:
            return row, None
        for key, value in settings.items():
            setattr(row, key, value)
        bump(row)  # also retries a move that was refused or rolled back
        return row, record_operation(self.session, "update", "uplink", row, self.caller)

    def _claim_subinterfaces(
        self, bridge: Bridge, interface: str, foreign: Mapping[str, dict[str, Any] | None]
    ) -> None:
        names = LinkNameRepository(self.session)
        for name, vlan_id in uplink_subinterfaces(self.session, bridge.id, interface):
            refuse_foreign(name, foreign.get(name))
            existing = names.get(name)
            if existing is not None and (existing.resource, existing.resource_id) != (
                "vlan",
                vlan_id,
            ):
                raise NameTaken(
                    f"{name}, the 802.1Q link of {interface} that a VLAN of bridge "
                    f"{bridge.name} needs, is already used by {existing.resource} "
                    f"{existing.resource_id}"
                )
            if existing is None:
                names.add(LinkName(name=name, resource="vlan", resource_id=vlan_id))

    def delete(self, bridge_ref: str) -> tuple[Uplink, Operation | None]:
        _, row = self.get(bridge_ref)
        if row.deleted:
            return row, None
        row.deleted = True
        bump(row, Status.DELETING)
        return row, record_operation(self.session, "delete", "uplink", row, self.caller)
