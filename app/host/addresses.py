"""The host's IPv4 addresses and connected routes, for the subnet-clash checks (a managed
network must not take a subnet that a host interface already uses: libvirt refuses that with
"Network is already in use by interface", src/network/bridge_driver_linux.c).

Read with pyroute2 through the calling thread's network namespace.
"""

from __future__ import annotations

import socket

from pyroute2 import IPRoute

from app.domain.networks import HostPrefix

MAIN_TABLE = 254
RT_SCOPE_LINK = 253


def host_prefixes() -> list[HostPrefix]:
    """Every IPv4 address (`a.b.c.d/len`) and every connected route of the main table (a
    route with a device and no gateway, `a.b.c.0/len`) with the interface it is on."""
    with IPRoute() as ipr:
        names = {m["index"]: m.get_attr("IFLA_IFNAME") for m in ipr.link("dump")}
        found = [
            HostPrefix(
                names.get(a["index"], str(a["index"])), f"{local}/{a['prefixlen']}", "address"
            )
            for a in ipr.addr("dump", family=socket.AF_INET)
            if (local := a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS"))
        ]
        for route in ipr.route("dump", family=socket.AF_INET):
            table = route.get_attr("RTA_TABLE") or route["table"]
            oif = route.get_attr("RTA_OIF")
            connected = route["scope"] == RT_SCOPE_LINK and route.get_attr("RTA_GATEWAY") is None
            if table != MAIN_TABLE or not oif or not connected or route["dst_len"] == 0:
                continue
            destination = f"{route.get_attr('RTA_DST')}/{route['dst_len']}"
            found.append(HostPrefix(names.get(oif, str(oif)), destination, "route"))
    return found
