"""Kernel links through netlink (pyroute2 IPRoute): read observed links, apply planned changes.

Every call is idempotent in effect and explicit about EEXIST/ENODEV. A `LinkOps` instance
owns one netlink socket and must be used from one thread at a time.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from app.domain.links import LinkChanges, LinkKind, LinkSpec, ObservedLink

log = logging.getLogger(__name__)

IFF_UP = 0x1
AF_INET = 2
AF_INET6 = 10


class LinkError(Exception):
    """A netlink operation failed; `transient` errors are worth retrying soon."""

    TRANSIENT = frozenset({errno.ENODEV, errno.EBUSY, errno.EAGAIN, errno.ENOBUFS, errno.EINTR})

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code

    @property
    def transient(self) -> bool:
        return self.code in self.TRANSIENT


def _attr(msg: Any, name: str) -> Any:
    return msg.get_attr(name)


def observed_from_msg(msg: Any, addresses: Iterable[str] = ()) -> ObservedLink:
    """Convert one RTM_NEWLINK message into an ObservedLink."""
    info = _attr(msg, "IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info else None
    data = info.get_attr("IFLA_INFO_DATA") if info else None
    fields: dict[str, Any] = {}
    if data is not None and kind == "bridge":
        fields["stp"] = bool(data.get_attr("IFLA_BR_STP_STATE"))
        fields["forward_delay_cs"] = data.get_attr("IFLA_BR_FORWARD_DELAY")
    elif data is not None and kind == "tun":
        fields["tun_type"] = data.get_attr("IFLA_TUN_TYPE")
        fields["tun_owner"] = data.get_attr("IFLA_TUN_OWNER")
        fields["tun_group"] = data.get_attr("IFLA_TUN_GROUP")
        fields["tun_multi_queue"] = bool(data.get_attr("IFLA_TUN_MULTI_QUEUE"))
        fields["tun_vnet_hdr"] = bool(data.get_attr("IFLA_TUN_VNET_HDR"))
    return ObservedLink(
        index=msg["index"],
        name=_attr(msg, "IFLA_IFNAME"),
        kind=kind,
        alias=_attr(msg, "IFLA_IFALIAS"),
        mtu=_attr(msg, "IFLA_MTU") or 0,
        mac=_attr(msg, "IFLA_ADDRESS"),
        up=bool(msg["flags"] & IFF_UP),
        master_index=_attr(msg, "IFLA_MASTER") or None,
        addresses=tuple(addresses),
        **fields,
    )


def _cidr(msg: Any) -> str:
    address = _attr(msg, "IFA_LOCAL") or _attr(msg, "IFA_ADDRESS")
    return f"{address}/{msg['prefixlen']}"


class LinkOps:
    """Reads and changes links in one network namespace (None: the current one)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self.ipr = IPRoute(netns=netns) if netns else IPRoute()

    def close(self) -> None:
        self.ipr.close()

    def __enter__(self) -> LinkOps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- reading ---------------------------------------------------------------------------

    def addresses_by_index(self) -> dict[int, list[str]]:
        result: dict[int, list[str]] = defaultdict(list)
        for msg in self.ipr.addr("dump"):
            result[msg["index"]].append(_cidr(msg))
        return result

    def dump(self) -> list[ObservedLink]:
        """Every link of the namespace with its addresses: one link and one address dump."""
        addresses = self.addresses_by_index()
        return [
            observed_from_msg(msg, addresses.get(msg["index"], ())) for msg in self.ipr.link("dump")
        ]

    def get(self, name: str) -> ObservedLink | None:
        try:
            (msg,) = self.ipr.link("get", ifname=name)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise LinkError(f"reading link {name}: {exc}", exc.code) from exc
        index = msg["index"]
        addrs = [_cidr(a) for a in self.ipr.addr("dump") if a["index"] == index]
        return observed_from_msg(msg, addrs)

    def index_of(self, name: str) -> int | None:
        found = self.ipr.link_lookup(ifname=name)
        return found[0] if found else None

    # ---- changing --------------------------------------------------------------------------

    def create(self, spec: LinkSpec) -> int:
        """Create the bare link of `spec`; return its index. Mark it at once with mark()."""
        try:
            if spec.kind is LinkKind.BRIDGE:
                # the MTU is set afterwards (apply): only an MTU set on an existing bridge
                # counts as set by the user, so the kernel stops following its ports' MTU
                extra: dict[str, Any] = {"address": spec.mac} if spec.mac else {}
                self.ipr.link(
                    "add",
                    ifname=spec.name,
                    kind="bridge",
                    br_stp_state=int(spec.stp),
                    br_forward_delay=spec.forward_delay_cs,
                    **extra,
                )
            else:
                owner: dict[str, int] = {}
                if spec.owner_uid is not None:
                    owner["uid"] = spec.owner_uid
                if spec.owner_gid is not None:
                    owner["gid"] = spec.owner_gid
                self.ipr.link(
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
        except NetlinkError as exc:
            raise LinkError(f"creating {spec.kind} {spec.name}: {exc}", exc.code) from exc
        except OSError as exc:  # tuntap is created by ioctl on /dev/net/tun
            code = errno.EEXIST if exc.errno == errno.EBUSY else exc.errno
            raise LinkError(f"creating {spec.kind} {spec.name}: {exc}", code) from exc
        index = self.index_of(spec.name)
        if index is None:
            raise LinkError(f"{spec.name} vanished right after creation", errno.ENODEV)
        return index

    def mark(self, index: int, name: str, mark: str) -> None:
        """Put our ownership mark (ifalias) on a link."""
        try:
            self.ipr.link("set", index=index, ifalias=mark)
        except NetlinkError as exc:
            raise LinkError(f"marking {name}: {exc}", exc.code) from exc

    def apply(self, index: int, name: str, changes: LinkChanges) -> None:
        """Apply attribute changes to one link, in an order that cannot fail halfway usefully:
        bridge options, then MTU/MAC/alias/master, then up, then addresses."""
        try:
            if changes.stp is not None or changes.forward_delay_cs is not None:
                bridge_opts: dict[str, int] = {}
                if changes.stp is not None:
                    bridge_opts["br_stp_state"] = int(changes.stp)
                if changes.forward_delay_cs is not None:
                    bridge_opts["br_forward_delay"] = changes.forward_delay_cs
                self.ipr.link("set", index=index, kind="bridge", **bridge_opts)
            attrs: dict[str, Any] = {}
            if changes.mtu is not None:
                attrs["mtu"] = changes.mtu
            if changes.mac is not None:
                attrs["address"] = changes.mac
            if changes.mark is not None:
                attrs["ifalias"] = changes.mark
            if changes.master is not None:
                master_index = self.index_of(changes.master)
                if master_index is None:
                    raise LinkError(f"bridge {changes.master} does not exist", errno.ENODEV)
                attrs["master"] = master_index
            elif changes.nomaster:
                attrs["master"] = 0
            if changes.set_up:
                attrs["state"] = "up"
            if attrs:
                self.ipr.link("set", index=index, **attrs)
            for cidr in changes.remove_addresses:
                self._address("del", index, cidr)
            for cidr in changes.add_addresses:
                self._address("add", index, cidr)
        except NetlinkError as exc:
            raise LinkError(f"configuring {name}: {exc}", exc.code) from exc

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
