"""The bridge link kind (IFLA_INFO_KIND "bridge"): the shared base plus STP state and forward
delay (include/uapi/linux/if_link.h IFLA_BR_STP_STATE, IFLA_BR_FORWARD_DELAY), which are
compared, repaired and watched like the shared attributes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from app.domain.links.driver import LinkDriver, register
from app.domain.links.model import LinkChanges, LinkKind, LinkSpec, ObservedLink


class BridgeDriver(LinkDriver):
    kind = LinkKind.BRIDGE
    kernel_kind = "bridge"

    def diff(
        self,
        spec: LinkSpec,
        link: ObservedLink,
        masters: Mapping[int, str],
        mark: str | None = None,
    ) -> LinkChanges:
        changes = super().diff(spec, link, masters, mark)
        return replace(
            changes,
            stp=spec.stp if link.stp != spec.stp else None,
            forward_delay_cs=(
                spec.forward_delay_cs if link.forward_delay_cs != spec.forward_delay_cs else None
            ),
        )

    def watched(self, link: ObservedLink) -> tuple[object, ...]:
        return (link.stp, link.forward_delay_cs)


register(BridgeDriver())
