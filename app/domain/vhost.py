"""vhost-net (issue 13 item 1): what it is, when a NIC uses it, and the refusal where it
cannot.

vhost-net (drivers/vhost/net.c, kernel CONFIG_VHOST_NET, module vhost_net) moves a virtio-net
NIC's packets between the tap and the guest's rings in a kernel thread (`vhost-<qemu pid>`)
instead of qemu's own I/O thread. QEMU uses it for `-netdev tap,...,vhost=on` (qemu-options.hx)
once the guest's driver has started the device. The daemon opens /dev/vhost-net once per queue
and hands qemu the descriptors (`vhostfd=` / `vhostfds=`, as libvirt does): qemu runs
unprivileged and /dev/vhost-net is 0600 root where no udev rule opens it up.

A NIC's `vhost`: `on` asks for it (refused, 409 naming the probe's reason, where the host's
/dev/vhost-net does not work), `off` never, `auto` where the capability probe found it working
and the NIC is a virtio-net-pci on a tap-backed backend (anything else ignores vhost-net).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.domain.vlans import HostLacksFeature

# the capability probe's key (app.host.capabilities)
VHOST_NET = "vhost_net"
WHAT = "vhost-net (/dev/vhost-net: kernel CONFIG_VHOST_NET, module vhost_net)"
NOT_PROBED = "not probed"


def vhost_net_missing(capabilities: Mapping[str, Any]) -> str | None:
    """Why /dev/vhost-net does not work here (from GET /v1/host/capabilities), None when it
    does. A probe that did not report it counts as missing."""
    probed = capabilities.get(VHOST_NET)
    if probed is None:
        return NOT_PROBED
    if not probed.get("available"):
        return str(probed.get("reason") or "/dev/vhost-net does not open")
    return None


def require_vhost_net(missing: str | None) -> None:
    """409 host-lacks-feature (with `missing_features`, as a VLAN's) when `missing` says why
    vhost-net does not work here; nothing when it does (None). The caller names the NIC
    (app.domain.errors.naming)."""
    if missing is None:
        return
    raise HostLacksFeature(
        f"vhost=on needs {WHAT}, which does not work on this host: {missing} "
        "(vhost=auto uses it only where it works)",
        missing_features=[
            {
                "feature": VHOST_NET,
                "description": "vhost-net",
                "kernel_config": "CONFIG_VHOST_NET",
                "module": "vhost_net",
                "reason": missing,
            }
        ],
    )
