"""The 802.1Q sub-interface link kind (IFLA_INFO_KIND "vlan", ip-link(8) `type vlan`): the
shared base, stacked on its parent (IFLA_LINK) and optionally a bridge port (the uplink's
`<uplink>.<vid>` in a per-VLAN bridge). The VLAN id and protocol can only be set at creation
(net/8021q/vlan_netlink.c vlan_changelink accepts only flags and QoS maps), so a difference
re-creates the link. Its name derives from its parent's (`<uplink>.<vid>`), so
another parent is another link."""

from __future__ import annotations

from dataclasses import dataclass

from app.domain.links.driver import LinkDriver, register
from app.domain.links.model import LinkDetails, LinkKind, LinkOptions, LinkSpec, ObservedLink

ETH_P_8021Q = 0x8100  # include/uapi/linux/if_ether.h: the 802.1Q tag protocol id (TPID)


@dataclass(frozen=True)
class VlanOptions(LinkOptions):
    """What a sub-interface is: VLAN `vid` (1-4094) tagged with `protocol` (the TPID)."""

    vid: int
    protocol: int = ETH_P_8021Q


@dataclass(frozen=True)
class VlanDetails(LinkDetails):
    """What the kernel reports (IFLA_VLAN_ID, IFLA_VLAN_PROTOCOL of IFLA_INFO_DATA)."""

    vid: int | None
    protocol: int | None


class VlanDriver(LinkDriver):
    kind = LinkKind.VLAN
    kernel_kind = "vlan"
    bridge_port = True

    def immutable_mismatch(self, spec: LinkSpec, link: ObservedLink) -> str | None:
        why = super().immutable_mismatch(spec, link)
        if why is not None:
            return why
        want = spec.options if isinstance(spec.options, VlanOptions) else None
        have = link.details if isinstance(link.details, VlanDetails) else None
        if want is None:
            return None
        if have is None or (have.vid, have.protocol) != (want.vid, want.protocol):
            seen = "unknown" if have is None else f"{have.vid} (protocol {have.protocol:#06x})"
            return f"VLAN id {seen} differs from {want.vid} (protocol {want.protocol:#06x})"
        return None


register(VlanDriver())
