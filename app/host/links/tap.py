"""Persistent taps on the host: created through pyroute2's tuntap support (an ioctl on
/dev/net/tun: TUNSETIFF, TUNSETOWNER/TUNSETGROUP, TUNSETPERSIST) without packet info, with the
queue mode and vnet header asked for; their tun attributes decoded from IFLA_INFO_DATA
(include/uapi/linux/if_link.h IFLA_TUN_*)."""

from __future__ import annotations

from typing import Any

from pyroute2 import IPRoute

from app.domain.links import LinkKind, LinkSpec
from app.host import rtnl
from app.host.links.base import HostLinkDriver, register
from app.host.rtnl import RawLink


class HostTapDriver(HostLinkDriver):
    kind = LinkKind.TAP
    kernel_kind = "tun"

    def create(self, ipr: IPRoute, spec: LinkSpec) -> None:
        owner: dict[str, int] = {}
        if spec.owner_uid is not None:
            owner["uid"] = spec.owner_uid
        if spec.owner_gid is not None:
            owner["gid"] = spec.owner_gid
        ipr.link(
            "add",
            ifname=spec.name,
            kind="tuntap",
            mode="tap",
            ifr={
                "no_pi": 1,
                "multi_queue": int(spec.multi_queue),
                "vnet_hdr": int(spec.vnet_hdr),
            },
            **owner,
        )

    def observe(self, link: RawLink) -> dict[str, Any]:
        return {
            "tun_type": link.info_u8(rtnl.IFLA_TUN_TYPE),
            "tun_owner": link.info_u32(rtnl.IFLA_TUN_OWNER),
            "tun_group": link.info_u32(rtnl.IFLA_TUN_GROUP),
            "tun_multi_queue": bool(link.info_u8(rtnl.IFLA_TUN_MULTI_QUEUE)),
            "tun_vnet_hdr": bool(link.info_u8(rtnl.IFLA_TUN_VNET_HDR)),
        }


register(HostTapDriver())
