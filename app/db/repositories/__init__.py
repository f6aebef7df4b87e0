"""Repositories: the only place that builds queries (import-linter keeps sqlalchemy's
query constructs out of app.services and app.supervisor, and app.api off this package).
One module per resource on a generic base (base.py); every public name is re-exported here,
so `from app.db.repositories import X` works whatever module X lives in."""

from __future__ import annotations

from app.db.repositories.base import UUID_LENGTH, Repository, ResourceRepository, LINK_MODELS
from app.db.repositories.addresses import network_gateways, own_addresses, address_holders
from app.db.repositories.claims import WILDCARD, HostPortRepository, LinkNameRepository
from app.db.repositories.dependents import DependentsRepository
from app.db.repositories.links import (
    TapRepository,
    BridgeRepository,
    BridgeFacts,
    stored_link_settings,
    ObservedState,
    bridge_facts,
    LinkSpecs,
    load_link_specs,
    link_rows,
    link_referrers,
)
from app.db.repositories.networks import (
    NetworkRepository,
    PortForwardRepository,
    NicObservation,
    record_nic_addresses,
    vms_by_mac,
    RowState,
    NetworkState,
    ForwardState,
    load_network_state,
    record_forward_outcomes,
    remove_forwards,
    ForwardOutcome,
    orphan_forward_claims,
    probe_targets,
    network_referrers,
)
from app.db.repositories.operations import FinishedOperation, OperationRepository, reserve_event_ids
from app.db.repositories.uplinks import (
    UplinkRepository,
    uplink_of,
    uplinks_of,
    UplinkMove,
    uplink_moves,
)
from app.db.repositories.vms import VmRepository, vm_spec

__all__ = [
    "BridgeFacts",
    "BridgeRepository",
    "DependentsRepository",
    "FinishedOperation",
    "ForwardOutcome",
    "ForwardState",
    "HostPortRepository",
    "LINK_MODELS",
    "LinkNameRepository",
    "LinkSpecs",
    "NetworkRepository",
    "NetworkState",
    "NicObservation",
    "ObservedState",
    "OperationRepository",
    "PortForwardRepository",
    "Repository",
    "ResourceRepository",
    "RowState",
    "TapRepository",
    "UUID_LENGTH",
    "UplinkMove",
    "UplinkRepository",
    "VmRepository",
    "WILDCARD",
    "address_holders",
    "bridge_facts",
    "link_referrers",
    "link_rows",
    "load_link_specs",
    "load_network_state",
    "network_gateways",
    "network_referrers",
    "orphan_forward_claims",
    "own_addresses",
    "probe_targets",
    "record_forward_outcomes",
    "record_nic_addresses",
    "remove_forwards",
    "reserve_event_ids",
    "stored_link_settings",
    "uplink_moves",
    "uplink_of",
    "uplinks_of",
    "vm_spec",
    "vms_by_mac",
]
