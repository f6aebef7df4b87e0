"""Repositories: the only place that builds queries (import-linter keeps sqlalchemy's
query constructs out of app.services and app.supervisor, and app.api off this package).
One module per resource on a generic base (base.py); every public name is re-exported here,
so `from app.db.repositories import X` works whatever module X lives in."""

from __future__ import annotations

from app.db.link_settings import stored_link_settings
from app.db.repositories.addresses import address_holders, network_gateways, own_addresses
from app.db.repositories.base import LINK_MODELS, UUID_LENGTH, Repository, ResourceRepository
from app.db.repositories.claims import WILDCARD, HostPortRepository, LinkNameRepository
from app.db.repositories.dependents import DependentsRepository
from app.db.repositories.links import (
    BridgeFacts,
    BridgeRepository,
    LinkSpecs,
    ObservedState,
    TapRepository,
    bridge_facts,
    journal_create_intents,
    link_referrers,
    link_rows,
    load_link_specs,
)
from app.db.repositories.networks import (
    ForwardOutcome,
    ForwardState,
    NetworkRepository,
    NetworkState,
    NicObservation,
    PortForwardRepository,
    RowState,
    load_network_state,
    network_referrers,
    orphan_forward_claims,
    probe_targets,
    record_forward_outcomes,
    record_nic_addresses,
    remove_forwards,
    vms_by_mac,
)
from app.db.repositories.operations import FinishedOperation, OperationRepository, reserve_event_ids
from app.db.repositories.port_vlans import (
    port_master,
    tap_port_vlans,
    vlan_masters,
    vlan_referrers,
    vlan_users,
)
from app.db.repositories.trunks import (
    mark_filtering_ours,
    released_port_vlans,
    trunks_to_release,
)
from app.db.repositories.uplinks import (
    UplinkMove,
    UplinkRepository,
    release_uplink_subinterfaces,
    uplink_moves,
    uplink_of,
    uplink_subinterfaces,
    uplinks_of,
)
from app.db.repositories.vlans import (
    VlanRepository,
    VlanWork,
    desired_port_vlans,
    load_vlan_work,
    vlan_bridge_mac,
    vlan_link_names,
    vlan_link_specs,
    vlan_rows,
    vlan_trunks,
)
from app.db.repositories.vms import VmRepository, vm_spec

__all__ = [
    "LINK_MODELS",
    "UUID_LENGTH",
    "WILDCARD",
    "BridgeFacts",
    "BridgeRepository",
    "DependentsRepository",
    "FinishedOperation",
    "ForwardOutcome",
    "ForwardState",
    "HostPortRepository",
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
    "UplinkMove",
    "UplinkRepository",
    "VlanRepository",
    "VlanWork",
    "VmRepository",
    "address_holders",
    "bridge_facts",
    "desired_port_vlans",
    "journal_create_intents",
    "link_referrers",
    "link_rows",
    "load_link_specs",
    "load_network_state",
    "load_vlan_work",
    "mark_filtering_ours",
    "network_gateways",
    "network_referrers",
    "orphan_forward_claims",
    "own_addresses",
    "port_master",
    "probe_targets",
    "record_forward_outcomes",
    "record_nic_addresses",
    "release_uplink_subinterfaces",
    "released_port_vlans",
    "remove_forwards",
    "reserve_event_ids",
    "stored_link_settings",
    "tap_port_vlans",
    "trunks_to_release",
    "uplink_moves",
    "uplink_of",
    "uplink_subinterfaces",
    "uplinks_of",
    "vlan_bridge_mac",
    "vlan_link_names",
    "vlan_link_specs",
    "vlan_masters",
    "vlan_referrers",
    "vlan_rows",
    "vlan_trunks",
    "vlan_users",
    "vm_spec",
    "vms_by_mac",
]
