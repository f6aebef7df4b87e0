"""The host's IPv4 addresses and connected routes, for the subnet-clash checks (a managed
network must not take a subnet that a host interface already uses: libvirt refuses that with
"Network is already in use by interface", src/network/bridge_driver_linux.c), and the
`subnet_clashes` diagnostic of GET /v1/host/diagnostics.

Read with pyroute2 through the calling thread's network namespace. Only the interfaces that
carry an address or a connected route are named (if_indextoname), so the cost does not grow
with the number of address-less taps.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Network

from pyroute2 import IPRoute, NetlinkError

from app.domain.networks import HostPrefix, clash_reason, foreign_clash
from app.host.diagnostics import Check
from app.host.errors import HostError

__all__ = ["AddressReadError", "HostPrefix", "check_subnet_clashes", "host_prefixes"]

MAIN_TABLE = 254
RT_SCOPE_LINK = 253


class AddressReadError(HostError):
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


def check_subnet_clashes(
    networks: Sequence[tuple[str, str]],
    own: Mapping[str, Sequence[str]],
    prefixes: Sequence[HostPrefix] | None = None,
) -> Check:
    """The `subnet_clashes` diagnostic: each managed network (name, subnet) against the
    host's addresses and connected routes that are not kvmnetd's (`own`: link name -> our
    addresses there). An overlap means the host answers for someone else's addresses."""
    name = "subnet_clashes"
    try:
        found = host_prefixes() if prefixes is None else prefixes
    except AddressReadError as exc:
        return Check(name, False, "warning", str(exc))
    clashes = []
    for network, subnet in networks:
        clash = foreign_clash(IPv4Network(subnet), found, own)
        if clash is not None:
            clashes.append(
                {
                    "network": network,
                    "subnet": subnet,
                    "interface": clash.interface,
                    "prefix": clash.prefix,
                    "kind": clash.kind,
                    "reason": clash_reason(IPv4Network(subnet), clash),
                }
            )
    if not clashes:
        return Check(name, True, "info", "no network's subnet is used by another interface")
    detail = "; ".join(f"network {c['network']!r}: {c['reason']}" for c in clashes)
    return Check(name, False, "error", detail, {"clashes": clashes})
