"""802.1Q sub-interfaces on the host: `ip link add link <parent> name <name> type vlan
protocol 802.1Q id <vid>` through pyroute2 (IFLA_LINK, IFLA_VLAN_ID, IFLA_VLAN_PROTOCOL of
include/uapi/linux/if_link.h), decoded back from IFLA_INFO_DATA. A kernel without 8021q
answers EOPNOTSUPP, which the caller reports on the VLAN's row."""

from __future__ import annotations

import errno
import struct
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from app.domain.links import LinkKind, LinkSpec
from app.domain.links.vlan import ETH_P_8021Q, VlanDetails, VlanOptions
from app.host.links.base import HostLinkDriver, register
from app.host.rtnl import RawLink

IFLA_VLAN_ID = 1  # u16, host order
IFLA_VLAN_PROTOCOL = 5  # be16
_U16 = struct.Struct("=H")
_BE16 = struct.Struct("!H")


class HostVlanDriver(HostLinkDriver):
    kind = LinkKind.VLAN
    kernel_kind = "vlan"

    def create(self, ipr: IPRoute, spec: LinkSpec) -> None:
        if not isinstance(spec.options, VlanOptions) or spec.parent is None:
            raise NetlinkError(errno.EINVAL, f"{spec.name}: a VLAN link needs a parent and a VID")
        found = ipr.link_lookup(ifname=spec.parent)
        if not found:
            raise NetlinkError(errno.ENODEV, f"parent link {spec.parent} does not exist")
        ipr.link(
            "add",
            ifname=spec.name,
            kind="vlan",
            link=found[0],
            vlan_id=spec.options.vid,
            vlan_protocol=spec.options.protocol,
        )

    def observe(self, link: RawLink) -> dict[str, Any]:
        vid = link.info.get(IFLA_VLAN_ID)
        protocol = link.info.get(IFLA_VLAN_PROTOCOL)
        return {
            "details": VlanDetails(
                vid=_U16.unpack_from(vid)[0] if vid and len(vid) >= 2 else None,
                protocol=(
                    _BE16.unpack_from(protocol)[0]
                    if protocol and len(protocol) >= 2
                    else ETH_P_8021Q
                ),
            )
        }


register(HostVlanDriver())
