"""Link kind drivers, the pure half: what a spec of a kind depends on and how desired and
observed links of that kind compare. The host half (create, kind options, observe) lives in
app.host.links under the same LinkKind.

The shape follows Incus's network drivers (internal/server/network/network_load.go: a map
from type name to driver; driver_common.go: a common base each driver embeds and overrides
only where it differs). `LinkDriver` is that base: it owns what every kind of ours shares
(MTU, MAC, addresses, up, the ifalias mark, the master of a kind that can be a bridge port,
the parent of a stacked kind). A kind is one module that subclasses it and calls
`register()`; nothing else switches on the kind.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterable, Iterator, Mapping
from typing import ClassVar, Generic, Protocol, TypeVar

from app.domain.links.model import LinkChanges, LinkKind, LinkSpec, ObservedLink
from app.domain.registry import Registry


def managed_addresses(addresses: Iterable[str]) -> set[str]:
    """Addresses we manage: everything but IPv6 link-local, which the kernel owns."""
    managed = set()
    for addr in addresses:
        iface = ipaddress.ip_interface(addr)
        if isinstance(iface.ip, ipaddress.IPv6Address) and iface.ip.is_link_local:
            continue
        managed.add(str(iface))
    return managed


def port_isolation(spec: LinkSpec, joining: bool, have: bool | None) -> bool | None:
    """The bridge port flag IFLA_BRPORT_ISOLATED to set on a port of `spec`, or None: only
    on a port with a master (the flag belongs to the bridge port, net/bridge/br_if.c); a
    port joining a bridge starts with it off (new_nbp), so an isolated one joining gets it
    set after the join; a port already there gets it set when it differs from `have`.
    An isolated port forwards only to ports that are not isolated
    (Documentation/networking/bridge.rst; net/bridge/br_forward.c should_deliver)."""
    if spec.master is None:
        return None
    if joining:
        return True if spec.isolated else None
    return spec.isolated if have is not None and have != spec.isolated else None


class LinkDriver:
    """The common base of every link kind. Subclasses set `kind` and `kernel_kind` and
    override only what differs from the shared behaviour."""

    kind: ClassVar[LinkKind]
    # IFLA_INFO_KIND the kernel reports for links of this kind ("bridge", "tun", "vlan")
    kernel_kind: ClassVar[str]
    # whether links of this kind can be bridge ports: then `LinkSpec.master` is managed
    # (enslaved, released) and the link depends on its master
    bridge_port: ClassVar[bool] = False

    def dependencies(self, spec: LinkSpec) -> tuple[str, ...]:
        """Names of the links that must exist before this one can be created or configured
        (and that it must be removed before): its parent, and its master when a port."""
        master = spec.master if self.bridge_port else None
        return tuple(name for name in (spec.parent, master) if name)

    def immutable_mismatch(self, spec: LinkSpec, link: ObservedLink) -> str | None:
        """Why `link` must be re-created to match `spec`, or None."""
        if link.kind != self.kernel_kind:
            return f"link kind is {link.kind}, want {self.kernel_kind}"
        return None

    def diff(
        self,
        spec: LinkSpec,
        link: ObservedLink,
        masters: Mapping[int, str],
        mark: str | None = None,
    ) -> LinkChanges:
        """The changes that bring `link` to `spec` (mutable attributes only): the shared
        ones here; a kind adds its own by overriding and extending the result."""
        want = managed_addresses(spec.addresses)
        have = managed_addresses(link.addresses)
        master: str | None = None
        nomaster = False
        isolated: bool | None = None
        if self.bridge_port:
            current = masters.get(link.master_index) if link.master_index else None
            if spec.master is not None and current != spec.master:
                master = spec.master
            elif spec.master is None and link.master_index:
                nomaster = True
            isolated = port_isolation(spec, joining=master is not None, have=link.port_isolated)
        return LinkChanges(
            mtu=spec.mtu if spec.mtu is not None and spec.mtu != link.mtu else None,
            mac=spec.mac if spec.mac is not None and spec.mac != link.mac else None,
            set_up=not link.up,
            master=master,
            nomaster=nomaster,
            add_addresses=tuple(sorted(want - have)),
            remove_addresses=tuple(sorted(have - want)),
            mark=mark,
            isolated=isolated,
        )

    def new_link_changes(self, spec: LinkSpec) -> LinkChanges:
        """Everything to set on a link of this kind we just created, our mark included."""
        return LinkChanges(
            mtu=spec.mtu,
            mac=spec.mac,
            set_up=True,
            master=spec.master,
            add_addresses=tuple(spec.addresses),
            mark=spec.mark,
            options=spec.options,
            isolated=(port_isolation(spec, joining=True, have=None) if self.bridge_port else None),
        )

    def watched(self, link: ObservedLink) -> tuple[object, ...]:
        """The kind's own attributes the fingerprint includes: a change to one of them
        reported by netlink makes the link's owner look again. Default: its details."""
        return () if link.details is None else (link.details,)


class KindedDriver(Protocol):
    """What a link kind registry keys a driver by (both halves' drivers have it)."""

    @property
    def kind(self) -> str: ...

    @property
    def kernel_kind(self) -> str: ...


K = TypeVar("K", bound=KindedDriver)


class LinkKinds(Generic[K]):
    """The drivers of the link kinds, keyed twice: by our kind (what a spec names) and by
    the IFLA_INFO_KIND the kernel reports for such links ("tun" for a tap), each key taken
    once. `generic` answers for observed links no driver claims (foreign kinds). The pure
    half (here) and the host half (app.host.links.base) each keep one."""

    def __init__(self, what: str, generic: K) -> None:
        self.by_kind: Registry[K] = Registry(what)
        self.by_kernel_kind: Registry[K] = Registry(f"kernel {what}")
        self.generic = generic

    def register(self, driver: K) -> K:
        """Make `driver` the one of its kind and kernel kind (ValueError when either is
        taken; nothing changes then)."""
        self.by_kind.add(driver.kind, driver)
        try:
            self.by_kernel_kind.add(driver.kernel_kind, driver)
        except ValueError:
            self.by_kind.remove(driver.kind)
            raise
        return driver

    def unregister(self, kind: str) -> None:
        """Forget link kind `kind`, both of its keys (nothing when it is not registered)."""
        driver = self.by_kind.find(kind)
        if driver is not None:
            self.by_kind.remove(kind)
            self.by_kernel_kind.remove(driver.kernel_kind)

    @contextlib.contextmanager
    def registered(self, *drivers: K) -> Iterator[None]:
        """`drivers` registered for the duration of the block (tests, as a new kind's
        module would register itself)."""
        with contextlib.ExitStack() as stack:
            for driver in drivers:
                self.register(driver)
                stack.callback(self.unregister, driver.kind)
            yield

    def find(self, kind: str) -> K | None:
        return self.by_kind.find(kind)

    def for_kernel_kind(self, kernel_kind: str | None) -> K:
        """The driver of links the kernel reports as `kernel_kind`; `generic` for others."""
        return self.by_kernel_kind.find(kernel_kind or "") or self.generic


KINDS: LinkKinds[LinkDriver] = LinkKinds("link kind", LinkDriver())
register = KINDS.register
unregister = KINDS.unregister
registered = KINDS.registered


def find_driver(kind: str) -> LinkDriver | None:
    """The driver of a link kind, or None for a kind nothing registered (a stored row
    written by a newer version, say): the planner reports it on the row."""
    return KINDS.find(kind)


def driver_for_link(link: ObservedLink) -> LinkDriver:
    """The driver for an observed link by its kernel kind; the shared base for others."""
    return KINDS.for_kernel_kind(link.kind)


def registered_kinds() -> tuple[str, ...]:
    return tuple(KINDS.by_kind.names())
