"""Bridge port isolation (issue 11): what it means, and the refusals where it cannot apply.

The kernel bridge port flag IFLA_BRPORT_ISOLATED (include/uapi/linux/if_link.h; iproute2
`bridge link set dev X isolated on`; Linux 4.18+): an isolated port forwards only to ports
that are not isolated (Documentation/networking/bridge.rst, net/bridge/br_forward.c
should_deliver). Guests on isolated ports of one bridge so reach the bridge itself (the
host's gateway address on it) and its ports that are not isolated (an uplink), but not each
other. The flag belongs to a bridge port: a link on no bridge has none to set.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.domain.errors import InvalidInput
from app.domain.vlans import HostLacksFeature

# the capability probe's key under `links` (app.host.capabilities)
PORT_ISOLATION = "port_isolation"
WHAT = "bridge port isolation (IFLA_BRPORT_ISOLATED, Linux 4.18+)"


def port_isolation_missing(links: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Why the probed kernel cannot isolate bridge ports (from GET /v1/host/capabilities'
    `links`), or None when it can. A probe that did not report it counts as missing."""
    probed = links.get(PORT_ISOLATION)
    if probed is None:
        return "not probed"
    if not probed.get("available"):
        return str(probed.get("reason") or "the kernel refused it")
    return None


def require_port_isolation(missing: str | None) -> None:
    """409 host-lacks-feature (with `missing_features`, as a VLAN's) when `missing` says
    why the kernel cannot isolate ports; nothing when it can (None)."""
    if missing is None:
        return
    raise HostLacksFeature(
        f"isolated needs {WHAT}, which this host's kernel does not honour: {missing}",
        missing_features=[
            {
                "feature": PORT_ISOLATION,
                "description": WHAT,
                "kernel_config": "CONFIG_BRIDGE",
                "module": "bridge",
                "reason": missing,
            }
        ],
    )


def require_bridge_port(isolated: bool, on_bridge: bool, what: str) -> None:
    """422 for isolation asked of `what` where it is no bridge port."""
    if isolated and not on_bridge:
        raise InvalidInput(
            f"isolated: {what} is on no bridge, and isolation is a bridge port's flag "
            "(give `bridge`, or leave isolated false)"
        )
