"""Bridges on the host: created with MAC, STP state and forward delay in one message; STP
and forward delay repaired in the order the kernel accepts; both decoded from
IFLA_INFO_DATA (include/uapi/linux/if_link.h IFLA_BR_*)."""

from __future__ import annotations

import logging
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from app.domain.links import LinkChanges, LinkKind, LinkSpec
from app.host import rtnl
from app.host.links.base import HostLinkDriver, register
from app.host.rtnl import RawLink

log = logging.getLogger(__name__)

BRIDGE_MTU_MAX = 65535  # ETH_MAX_MTU: a bridge's max_mtu (net/bridge/br_device.c)


def bridge_option_steps(changes: LinkChanges) -> list[dict[str, int]]:
    """STP state and forward delay as separate messages, in the order the kernel accepts:
    with STP on it refuses a forward delay under 2 s, and it applies the delay before the
    STP state within one message. So STP goes off first, or the delay is set before STP
    goes on."""
    stp = None if changes.stp is None else {"br_stp_state": int(changes.stp)}
    delay = (
        None if changes.forward_delay_cs is None else {"br_forward_delay": changes.forward_delay_cs}
    )
    steps = [stp, delay] if changes.stp is False else [delay, stp]
    return [step for step in steps if step is not None]


class HostBridgeDriver(HostLinkDriver):
    kind = LinkKind.BRIDGE
    kernel_kind = "bridge"

    def create(self, ipr: IPRoute, spec: LinkSpec) -> None:
        """A bridge with its MAC set at creation (addr_assign_type NET_ADDR_SET: ports
        joining or leaving never change it), and with its MTU marked as set by the user, so
        that ports joining never lower it (net/bridge/br_if.c br_mtu_auto_adjust). The mark
        comes only from a real change of the MTU (br_change_mtu; dev_set_mtu returns early
        for the same value, net/core/dev.c): the bridge, still without ports, is set one
        off its MTU here, and apply() then sets the MTU it keeps."""
        extra: dict[str, Any] = {"address": spec.mac} if spec.mac else {}
        ipr.link(
            "add",
            ifname=spec.name,
            kind="bridge",
            br_stp_state=int(spec.stp),
            br_forward_delay=spec.forward_delay_cs,
            **extra,
        )
        if spec.mtu is None:
            return
        detour = spec.mtu + 1 if spec.mtu < BRIDGE_MTU_MAX else spec.mtu - 1
        try:
            (index,) = ipr.link_lookup(ifname=spec.name)
            ipr.link("set", index=index, mtu=detour)
        except (NetlinkError, ValueError) as exc:
            # the bridge exists (the create succeeded): a port that lowers its MTU later is
            # repaired when netlink reports it, which also marks the MTU as set
            log.warning("could not mark %s's MTU as set: %s", spec.name, exc)

    def apply_options(self, ipr: IPRoute, index: int, changes: LinkChanges) -> None:
        for option in bridge_option_steps(changes):
            ipr.link("set", index=index, kind="bridge", **option)

    def observe(self, link: RawLink) -> dict[str, Any]:
        stp = link.info_u32(rtnl.IFLA_BR_STP_STATE)
        return {
            "stp": bool(stp) if stp is not None else None,
            "forward_delay_cs": link.info_u32(rtnl.IFLA_BR_FORWARD_DELAY),
        }


register(HostBridgeDriver())
