"""VM NIC backends as drivers (app.domain.nics.registry): one module per backend, each
registering its driver on import. The built-in ones are imported here; a new backend is a new
module in this package plus its import below (and its request fields in app.schemas.vms)."""

from __future__ import annotations

from app.domain.nics import bridge, hub, macvtap, port, socket, sriov, tap, user
from app.domain.nics.registry import (
    HostLink,
    HostLinkNeed,
    NicClaims,
    NicDriver,
    backend_options,
    backends,
    backends_where,
    backends_with,
    dump_options,
    field_backends,
    find_driver,
    load_options,
    nic_driver,
    peer_nics,
    present_options,
    register,
    registered,
    unregister,
    validate_hub,
)

BUILT_IN = (bridge, hub, macvtap, port, socket, sriov, tap, user)

__all__ = [
    "BUILT_IN",
    "HostLink",
    "HostLinkNeed",
    "NicClaims",
    "NicDriver",
    "backend_options",
    "backends",
    "backends_where",
    "backends_with",
    "dump_options",
    "field_backends",
    "find_driver",
    "load_options",
    "nic_driver",
    "peer_nics",
    "present_options",
    "register",
    "registered",
    "unregister",
    "validate_hub",
]
