"""Link kind drivers, the host half: create a link of a kind, apply the kind's own options,
decode the kind's own attributes from a link message. The shared attributes (MTU, MAC,
ifalias, master, up, addresses) are applied by app.host.netlink.LinkOps for every kind, and
compared by the pure half (app.domain.links.driver). Same map-of-drivers shape as there."""

from __future__ import annotations

from typing import Any, ClassVar

from pyroute2 import IPRoute

from app.domain.links import LinkChanges, LinkKind, LinkKinds, LinkSpec
from app.host.rtnl import RawLink


class HostLinkDriver:
    """The common base: no options of its own, nothing of its own to observe. A kind
    overrides `create` and whatever else differs."""

    kind: ClassVar[LinkKind]
    kernel_kind: ClassVar[str]  # IFLA_INFO_KIND, as the pure driver of the kind says

    def create(self, ipr: IPRoute, spec: LinkSpec) -> None:
        """Create the bare link of `spec` (pyroute2 raises NetlinkError or OSError; the
        caller wraps them). The shared attributes and the mark follow through apply."""
        raise NotImplementedError(f"creating links of kind {self.kind}")

    def apply_options(self, ipr: IPRoute, index: int, changes: LinkChanges) -> None:
        """Apply the kind's own fields of `changes`, before the shared attributes."""

    def observe(self, link: RawLink) -> dict[str, Any]:
        """The kind's own ObservedLink fields decoded from `link` (IFLA_INFO_DATA)."""
        return {}


KINDS: LinkKinds[HostLinkDriver] = LinkKinds("host link kind", HostLinkDriver())
register = KINDS.register
unregister = KINDS.unregister
registered = KINDS.registered


def find_host_driver(kind: str) -> HostLinkDriver | None:
    return KINDS.find(kind)


def host_driver_for_kernel_kind(kernel_kind: str | None) -> HostLinkDriver:
    """The driver that decodes links of this IFLA_INFO_KIND; the base for any other."""
    return KINDS.for_kernel_kind(kernel_kind)


def host_drivers() -> tuple[HostLinkDriver, ...]:
    return tuple(KINDS.by_kind.entries())
