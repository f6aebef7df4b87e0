"""The host's IPv4 addresses and connected routes, for the subnet-clash checks (a managed
network must not take a subnet that a host interface already uses: libvirt refuses that with
"Network is already in use by interface", src/network/bridge_driver_linux.c).

Read with pyroute2 through the calling thread's network namespace. Only the interfaces that
carry an address or a connected route are named (if_indextoname), so the cost does not grow
with the number of address-less taps.
"""

from __future__ import annotations

import socket

from pyroute2 import IPRoute, NetlinkError

from app.domain.networks import HostPrefix

MAIN_TABLE = 254
RT_SCOPE_LINK = 253


class AddressReadError(Exception):
    """The kernel's addresses or routes could not be read."""


def host_prefixes() -> list[HostPrefix]:
    """Every IPv4 address (`a.b.c.d/len`) and every connected route of the main table (a
    route with a device and no gateway, `a.b.c.0/len`) with the interface it is on."""
    found: list[tuple[int, str, str]] = []
    try:
        with IPRoute() as ipr:
            for a in ipr.addr("dump", family=socket.AF_INET):
                local = a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")
                if local:
                    found.append((a["index"], f"{local}/{a['prefixlen']}", "address"))
            for route in ipr.route("dump", family=socket.AF_INET):
                table = route.get_attr("RTA_TABLE") or route["table"]
                oif = route.get_attr("RTA_OIF")
                connected = (
                    route["scope"] == RT_SCOPE_LINK and route.get_attr("RTA_GATEWAY") is None
                )
                if table == MAIN_TABLE and oif and connected and route["dst_len"] > 0:
                    destination = f"{route.get_attr('RTA_DST')}/{route['dst_len']}"
                    found.append((oif, destination, "route"))
    except (OSError, NetlinkError) as exc:
        raise AddressReadError(f"cannot read the host's addresses and routes: {exc}") from exc
    return [HostPrefix(_name(index), prefix, kind) for index, prefix, kind in found]


def _name(index: int) -> str:
    try:
        return socket.if_indextoname(index)
    except OSError:  # gone since the dump
        return f"ifindex {index}"
