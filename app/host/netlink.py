"""Kernel links through netlink (pyroute2 IPRoute): read observed links, apply planned changes.

Every call is idempotent in effect and explicit about EEXIST/ENODEV. A `LinkOps` instance
owns one pyroute2 socket (bound to the thread that made it) for changes; reads of links go
through app.host.rtnl, which decodes only what the planner needs.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import Iterable
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifinfmsg import IFT_MULTI_QUEUE, IFT_NO_PI, IFT_TAP, IFT_VNET_HDR
from pyroute2.netlink.rtnl.ifinfmsg.tuntap import TUNSETIFF

from app.domain.links import LinkChanges, LinkKind, LinkSpec, ObservedLink, parse_mark
from app.host import rtnl
from app.host.errors import HostError
from app.host.links import find_host_driver, host_driver_for_kernel_kind, host_drivers
from app.host.links.bridge import BRIDGE_MTU_MAX as BRIDGE_MTU_MAX
from app.host.rtnl import RawLink

log = logging.getLogger(__name__)


class LinkError(HostError):
    """A netlink operation failed; `transient` errors are worth retrying soon."""

    TRANSIENT = frozenset({errno.ENODEV, errno.EBUSY, errno.EAGAIN, errno.ENOBUFS, errno.EINTR})

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code

    @property
    def transient(self) -> bool:
        return self.code in self.TRANSIENT


def observed(link: RawLink, addresses: Iterable[str] = ()) -> ObservedLink:
    """The planner's view of one link: the shared attributes, and the kind's own as its
    host driver decodes them (app.host.links)."""
    return ObservedLink(
        index=link.index,
        name=link.name or "",
        kind=link.kind,
        alias=link.alias,
        mtu=link.mtu or 0,
        mac=link.mac,
        up=link.up,
        oper_state=link.oper_state,
        master_index=link.master,
        addresses=tuple(addresses),
        parent_index=link.link,
        port_isolated=link.port_isolated,
        **host_driver_for_kernel_kind(link.kind).observe(link),
    )


class LinkOps:
    """Reads and changes links in the calling thread's network namespace (threads that
    serve another namespace enter it first: app.host.netns)."""

    def __init__(self) -> None:
        self.ipr = IPRoute()

    def close(self) -> None:
        self.ipr.close()

    def __enter__(self) -> LinkOps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- reading ---------------------------------------------------------------------------

    def addresses_by_index(self) -> dict[int, list[str]]:
        """Every address of the namespace by link index, read with app.host.rtnl's minimal
        decoder (each DIRTY pass reads them all)."""
        try:
            return rtnl.dump_addresses()
        except OSError as exc:
            raise LinkError(f"reading addresses: {exc}", exc.errno) from exc

    def dump(self) -> list[ObservedLink]:
        """Every link of the namespace with its addresses: one link and one address dump."""
        addresses = self.addresses_by_index()
        return [observed(link, addresses.get(link.index, ())) for link in rtnl.dump_links()]

    def get(self, name: str, addresses: dict[int, list[str]] | None = None) -> ObservedLink | None:
        """One link by name; pass `addresses` (addresses_by_index) when reading many."""
        try:
            link = rtnl.get_link(name)
        except OSError as exc:
            raise LinkError(f"reading link {name}: {exc}", exc.errno) from exc
        if link is None:
            return None
        if addresses is None:
            addresses = self.addresses_by_index()
        return observed(link, addresses.get(link.index, ()))

    def index_of(self, name: str) -> int | None:
        try:
            return socket.if_nametoindex(name)
        except OSError:
            return None

    # ---- changing --------------------------------------------------------------------------

    def create(self, spec: LinkSpec) -> int:
        """Create the bare link of `spec` through its kind's driver; return its index.
        Mark it at once with apply()."""
        driver = find_host_driver(spec.kind)
        if driver is None:
            raise LinkError(f"creating {spec.kind} {spec.name}: no driver for this link kind")
        try:
            driver.create(self.ipr, spec)
        except NetlinkError as exc:
            raise LinkError(f"creating {spec.kind} {spec.name}: {exc}", exc.code) from exc
        except OSError as exc:  # tuntap is created by ioctl on /dev/net/tun
            code = errno.EEXIST if exc.errno == errno.EBUSY else exc.errno
            raise LinkError(f"creating {spec.kind} {spec.name}: {exc}", code) from exc
        index = self.index_of(spec.name)
        if index is None:
            raise LinkError(f"{spec.name} vanished right after creation", errno.ENODEV)
        return index

    def apply(
        self, index: int, name: str, changes: LinkChanges, kind: LinkKind | None = None
    ) -> None:
        """Apply attribute changes to one link, in an order that cannot fail halfway usefully:
        the kind's own options (its driver's; without `kind`, each driver applies the fields
        it owns, and the others have none set), then MTU/MAC/alias/master, then the bridge
        port flag (it needs the port on its bridge), then up, then addresses."""
        driver = find_host_driver(kind) if kind is not None else None
        try:
            for each in (driver,) if driver is not None else host_drivers():
                each.apply_options(self.ipr, index, changes)
            attrs: dict[str, Any] = {}
            if changes.mtu is not None:
                attrs["mtu"] = changes.mtu
            if changes.mac is not None:
                attrs["address"] = changes.mac
            if changes.mark is not None:
                attrs["ifalias"] = changes.mark
            if changes.master is not None:
                attrs["master"] = self._our_master(changes.master)
            elif changes.nomaster:
                attrs["master"] = 0
            if changes.set_up and changes.isolated is None:
                attrs["state"] = "up"
            if attrs:
                self.ipr.link("set", index=index, **attrs)
            if changes.isolated is not None:
                # a joining port is isolated before it comes up: it never forwards to a
                # neighbour meanwhile
                self.set_port_isolated(index, changes.isolated)
                if changes.set_up:
                    self.ipr.link("set", index=index, state="up")
            for cidr in changes.remove_addresses:
                self._address("del", index, cidr)
            for cidr in changes.add_addresses:
                self._address("add", index, cidr)
        except NetlinkError as exc:
            raise LinkError(f"configuring {name}: {exc}", exc.code) from exc

    def set_port_isolated(self, index: int, isolated: bool) -> None:
        """`bridge link set dev X isolated on|off`: IFLA_BRPORT_ISOLATED in the port's
        IFLA_INFO_SLAVE_DATA (pyroute2 IPRoute.brport; RTM_NEWLINK with slave kind
        bridge). The link must be a bridge port already (else EOPNOTSUPP)."""
        self.ipr.brport("set", index=index, isolated=int(isolated))

    def _our_master(self, name: str) -> int:
        """The index of the bridge `name` a link of ours is to join. It must carry our mark:
        a foreign link that took the name of one of our bridges (ours deleted by hand) is
        never made the master of our links (EEXIST, not retried soon; the bridge's return
        wakes the port: app.supervisor.loop)."""
        try:
            link = rtnl.get_link(name)
        except OSError as exc:
            raise LinkError(f"reading link {name}: {exc}", exc.errno) from exc
        if link is None:
            raise LinkError(f"bridge {name} does not exist", errno.ENODEV)
        if parse_mark(link.alias) is None:
            raise LinkError(
                f"bridge {name} (index {link.index}, ifalias {link.alias!r}) is not managed "
                "by kvmnetd: no link of ours is put on it",
                errno.EEXIST,
            )
        return link.index

    def _address(self, command: str, index: int, cidr: str) -> None:
        iface = ipaddress.ip_interface(cidr)
        kwargs: dict[str, Any] = {
            "index": index,
            "address": str(iface.ip),
            "prefixlen": iface.network.prefixlen,
        }
        if command == "add" and iface.version == 4 and iface.network.prefixlen < 31:
            kwargs["broadcast"] = str(iface.network.broadcast_address)
        try:
            self.ipr.addr(command, **kwargs)
        except NetlinkError as exc:
            benign = errno.EEXIST if command == "add" else errno.EADDRNOTAVAIL
            if exc.code != benign:
                raise

    def delete(self, index: int, name: str) -> None:
        """Remove a link; a link that is already gone is fine."""
        try:
            self.ipr.link("del", index=index)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise LinkError(f"deleting {name}: {exc}", exc.code) from exc


def open_tap_queues(name: str, queues: int) -> list[int]:
    """Open an existing tap once per queue and return the file descriptors, to hand to qemu
    (`-netdev tap,fd=` / `fds=`) the way libvirt does: qemu then needs no access to
    /dev/net/tun (0600 on some hosts) and never opens a tap by name. Acts in the calling
    thread's network namespace. The caller closes the descriptors once qemu has them."""
    flags = IFT_TAP | IFT_NO_PI | IFT_VNET_HDR | (IFT_MULTI_QUEUE if queues > 1 else 0)
    ifreq = struct.pack("16sH", name.encode(), flags)
    fds: list[int] = []
    try:
        for _ in range(queues):
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
            fds.append(fd)
            fcntl.ioctl(fd, TUNSETIFF, ifreq)
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        raise LinkError(f"opening tap {name}: {exc}", exc.errno) from exc
    return fds
