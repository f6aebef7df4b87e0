"""Link kind drivers on the host, one module per kind (see base); importing this package
registers them. A new kind adds its module and its import here."""

from __future__ import annotations

from app.host.links import bridge as bridge
from app.host.links import tap as tap
from app.host.links import vlan as vlan
from app.host.links.base import (
    HostLinkDriver,
    find_host_driver,
    host_driver_for_kernel_kind,
    host_drivers,
    register,
    registered,
    unregister,
)

__all__ = [
    "HostLinkDriver",
    "find_host_driver",
    "host_driver_for_kernel_kind",
    "host_drivers",
    "register",
    "registered",
    "unregister",
]
