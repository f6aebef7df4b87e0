"""The tap link kind (a persistent tun/tap device, IFLA_INFO_KIND "tun" with IFLA_TUN_TYPE 2):
the shared base as a bridge port (it depends on its master bridge), plus the attributes only
creation can set (include/uapi/linux/if_tun.h: IFF_MULTI_QUEUE, TUNSETOWNER/TUNSETGROUP)."""

from __future__ import annotations

from app.domain.links.driver import LinkDriver, register
from app.domain.links.model import LinkKind, LinkSpec, ObservedLink

IFF_TAP_TYPE = 2  # IFLA_TUN_TYPE of a tap (IFF_TAP); 1 is a tun (IFF_TUN)


class TapDriver(LinkDriver):
    kind = LinkKind.TAP
    kernel_kind = "tun"
    bridge_port = True

    def immutable_mismatch(self, spec: LinkSpec, link: ObservedLink) -> str | None:
        """multi_queue and the owner can only be set at creation. vnet_hdr (like pi) is not
        compared: whoever opens the tap (qemu) sets it for its own use, and re-creating the
        tap under an open qemu would cut the VM off."""
        why = super().immutable_mismatch(spec, link)
        if why is not None:
            return why
        if link.tun_type != IFF_TAP_TYPE:
            return "link is a tun, not a tap"
        if bool(link.tun_multi_queue) != spec.multi_queue:
            return "multi_queue differs"
        if link.tun_owner != spec.owner_uid or link.tun_group != spec.owner_gid:
            return "owner differs"
        return None


register(TapDriver())
