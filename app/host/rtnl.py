"""A minimal read-only rtnetlink link reader: dump links and decode link notifications.

pyroute2 stays the library for every change we make. This module exists for the two hot
read paths, where pyroute2's general decoder was measured as the main cost (bench/taps.py):
the full-resync dump (about 0.4 ms per link, ~33 MiB allocated per 1000 links) and the link
monitor (about 0.4 ms per notification). It decodes only the attributes the planner uses.

The bridge's own notifications (family AF_BRIDGE, net/bridge/br_netlink.c br_ifinfo_notify)
come on the same group, RTNLGRP_LINK, as RTM_NEWLINK about a bridge port (or the bridge
itself): IFLA_MASTER names the bridge and IFLA_AF_SPEC holds the port's whole VLAN
membership, ranges compressed (RTEXT_FILTER_BRVLAN_COMPRESSED). Measured on Debian's 6.1:
`bridge vlan add|del dev <port> vid N [self]` sends one (plus RTM_NEWVLAN/RTM_DELVLAN on
RTNLGRP_BRVLAN, which needs a second subscription and names no bridge); a port left with no
VLAN gets one without IFLA_AF_SPEC. They decode to `PortVlans`, never to `RawLink`: they say
nothing about the link itself.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

NETLINK_ROUTE = 0
NLMSG_ERROR = 2
NLMSG_DONE = 3
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
IFA_ADDRESS = 1
IFA_LOCAL = 2
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
IFF_UP = 0x1

IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_LINK = 5
IFLA_MASTER = 10
IFLA_LINKINFO = 18
IFLA_OPERSTATE = 16
IFLA_IFALIAS = 20
OPER_STATES = ("unknown", "notpresent", "down", "lowerlayerdown", "testing", "dormant", "up")
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
IFLA_INFO_SLAVE_KIND = 4
IFLA_INFO_SLAVE_DATA = 5
IFLA_PROTINFO = 12
# include/uapi/linux/if_link.h: a bridge port's flag "forward only to non-isolated ports"
# (Documentation/networking/bridge.rst), in IFLA_INFO_SLAVE_DATA of a port's AF_UNSPEC link
# message and in IFLA_PROTINFO of its AF_BRIDGE one
IFLA_BRPORT_ISOLATED = 33
IFLA_BR_FORWARD_DELAY = 1
IFLA_BR_STP_STATE = 5
IFLA_TUN_OWNER = 1
IFLA_TUN_GROUP = 2
IFLA_TUN_TYPE = 3
IFLA_TUN_VNET_HDR = 5
IFLA_TUN_MULTI_QUEUE = 7
NLA_TYPE_MASK = 0x3FFF
AF_BRIDGE = 7
IFLA_AF_SPEC = 26
IFLA_BRIDGE_VLAN_INFO = 2  # include/uapi/linux/if_bridge.h: struct bridge_vlan_info
IFLA_BR_VLAN_FILTERING = 7
BRIDGE_VLAN_INFO_PVID = 0x2
BRIDGE_VLAN_INFO_UNTAGGED = 0x4
BRIDGE_VLAN_INFO_RANGE_BEGIN = 0x8
BRIDGE_VLAN_INFO_RANGE_END = 0x10
IFLA_EXT_MASK = 29  # include/uapi/linux/if_link.h
RTEXT_FILTER_BRVLAN_COMPRESSED = 1 << 2  # include/uapi/linux/rtnetlink.h

_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTATTR = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_VLAN_INFO = struct.Struct("=HH")  # flags, vid
_I32 = struct.Struct("=i")


@dataclass(frozen=True)
class RawLink:
    """The parts of one RTM_NEWLINK/RTM_DELLINK message the daemon uses."""

    event: str  # "new" or "del"
    index: int
    flags: int
    name: str | None
    mtu: int | None
    master: int | None
    alias: str | None
    mac: str | None
    kind: str | None
    info: dict[int, bytes]  # IFLA_INFO_DATA attributes, raw
    oper_state: str = "unknown"
    link: int | None = None  # IFLA_LINK: the lower link of a stacked one (VLAN, macvtap)
    # a bridge port's IFLA_BRPORT_ISOLATED (IFLA_INFO_SLAVE_KIND "bridge"; the one
    # attribute of its IFLA_INFO_SLAVE_DATA decoded); None for a link that is no bridge port
    port_isolated: bool | None = None

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)

    def info_u32(self, attr: int) -> int | None:
        raw = self.info.get(attr)
        return _U32.unpack_from(raw)[0] if raw is not None and len(raw) >= 4 else None

    def info_u8(self, attr: int) -> int | None:
        raw = self.info.get(attr)
        return raw[0] if raw else None


@dataclass(frozen=True)
class PortVlans:
    """An AF_BRIDGE link notification: the VLAN membership of one bridge port (or of the
    bridge's own port: `index` == `master`), vid -> (pvid, untagged)."""

    event: str  # "new" or "del" (the port left the bridge)
    index: int
    name: str | None
    master: int | None
    vlans: dict[int, tuple[bool, bool]]
    # IFLA_BRPORT_ISOLATED from IFLA_PROTINFO (a port's message only; None: not reported).
    # `bridge link set dev X isolated on|off` reports itself only this way
    isolated: bool | None = None


@dataclass(frozen=True)
class RawAddress:
    """An address notification: only which link it concerns matters to us."""

    event: str  # "new" or "del"
    index: int


def _attrs(data: bytes | memoryview, offset: int, end: int) -> Iterator[tuple[int, memoryview]]:
    view = memoryview(data)
    while offset + 4 <= end:
        length, kind = _RTATTR.unpack_from(view, offset)
        if length < 4:
            return
        yield kind & NLA_TYPE_MASK, view[offset + 4 : offset + length]
        offset += (length + 3) & ~3


def _string(value: memoryview) -> str:
    return bytes(value).split(b"\0", 1)[0].decode("utf-8", "replace")


@dataclass
class _LinkInfo:
    kind: str | None = None
    info: dict[int, bytes] = field(default_factory=dict)
    slave_kind: str | None = None
    isolated: bool = False  # IFLA_BRPORT_ISOLATED in IFLA_INFO_SLAVE_DATA

    @property
    def port_isolated(self) -> bool | None:
        return self.isolated if self.slave_kind == "bridge" else None


def _nested(value: memoryview) -> dict[int, bytes]:
    return {a: bytes(v) for a, v in _attrs(value, 0, len(value))}


def _isolated(brport: memoryview) -> bool:
    """IFLA_BRPORT_ISOLATED among a port's IFLA_BRPORT_* attributes (absent: off); the
    others are skipped undecoded (the dump's hot path)."""
    offset, end, unpack = 0, len(brport), _RTATTR.unpack_from
    while offset + 4 <= end:  # headers only: no view of each attribute is made
        length, kind = unpack(brport, offset)
        if length < 4:
            return False
        if kind & NLA_TYPE_MASK == IFLA_BRPORT_ISOLATED:
            return length > 4 and bool(brport[offset + 4])
        offset += (length + 3) & ~3
    return False


def _linkinfo(value: memoryview) -> _LinkInfo:
    found = _LinkInfo()
    for attr, inner in _attrs(value, 0, len(value)):
        if attr == IFLA_INFO_KIND:
            found.kind = _string(inner)
        elif attr == IFLA_INFO_DATA:
            found.info = _nested(inner)
        elif attr == IFLA_INFO_SLAVE_KIND:
            found.slave_kind = _string(inner)
        elif attr == IFLA_INFO_SLAVE_DATA:
            found.isolated = _isolated(inner)
    return found


def parse_link(data: bytes, offset: int, length: int, msg_type: int) -> RawLink:
    """Decode one link message whose netlink header starts at `offset`."""
    body = offset + _NLMSGHDR.size
    _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(data, body)
    fields: dict[str, object] = {}
    linkinfo = _LinkInfo()
    for attr, value in _attrs(data, body + _IFINFOMSG.size, offset + length):
        if attr == IFLA_IFNAME:
            fields["name"] = _string(value)
        elif attr == IFLA_MTU:
            fields["mtu"] = _U32.unpack_from(value)[0]
        elif attr == IFLA_MASTER:
            fields["master"] = _U32.unpack_from(value)[0] or None
        elif attr == IFLA_LINK:
            fields["link"] = _U32.unpack_from(value)[0] or None
        elif attr == IFLA_IFALIAS:
            fields["alias"] = _string(value) or None
        elif attr == IFLA_ADDRESS and len(value) == 6:
            fields["mac"] = bytes(value).hex(":")
        elif attr == IFLA_OPERSTATE and len(value) >= 1:
            state = value[0]
            fields["oper_state"] = OPER_STATES[state] if state < len(OPER_STATES) else "unknown"
        elif attr == IFLA_LINKINFO:
            linkinfo = _linkinfo(value)
    return RawLink(
        event="del" if msg_type == RTM_DELLINK else "new",
        index=index,
        flags=flags,
        name=fields.get("name"),  # type: ignore[arg-type]
        mtu=fields.get("mtu"),  # type: ignore[arg-type]
        master=fields.get("master"),  # type: ignore[arg-type]
        alias=fields.get("alias"),  # type: ignore[arg-type]
        mac=fields.get("mac"),  # type: ignore[arg-type]
        kind=linkinfo.kind,
        info=linkinfo.info,
        oper_state=fields.get("oper_state", "unknown"),  # type: ignore[arg-type]
        link=fields.get("link"),  # type: ignore[arg-type]
        port_isolated=linkinfo.port_isolated,
    )


def _vlan_infos(value: memoryview) -> dict[int, tuple[bool, bool]]:
    """IFLA_AF_SPEC's IFLA_BRIDGE_VLAN_INFO entries, ranges (RANGE_BEGIN .. RANGE_END, the
    same flags on each VID) expanded."""
    vlans: dict[int, tuple[bool, bool]] = {}
    begin: int | None = None
    for attr, inner in _attrs(value, 0, len(value)):
        if attr != IFLA_BRIDGE_VLAN_INFO or len(inner) < _VLAN_INFO.size:
            continue
        flags, vid = _VLAN_INFO.unpack_from(inner)
        membership = (bool(flags & BRIDGE_VLAN_INFO_PVID), bool(flags & BRIDGE_VLAN_INFO_UNTAGGED))
        if flags & BRIDGE_VLAN_INFO_RANGE_BEGIN:
            begin = vid
            continue
        first = begin if begin is not None and flags & BRIDGE_VLAN_INFO_RANGE_END else vid
        begin = None
        for each in range(first, vid + 1):
            vlans[each] = membership
    return vlans


def parse_port_vlans(data: bytes, offset: int, length: int, msg_type: int) -> PortVlans:
    """Decode one AF_BRIDGE link message whose netlink header starts at `offset`."""
    body = offset + _NLMSGHDR.size
    _family, _type, index, _flags, _change = _IFINFOMSG.unpack_from(data, body)
    name: str | None = None
    master: int | None = None
    vlans: dict[int, tuple[bool, bool]] = {}
    isolated: bool | None = None
    for attr, value in _attrs(data, body + _IFINFOMSG.size, offset + length):
        if attr == IFLA_IFNAME:
            name = _string(value)
        elif attr == IFLA_MASTER:
            master = _U32.unpack_from(value)[0] or None
        elif attr == IFLA_AF_SPEC:
            vlans = _vlan_infos(value)
        elif attr == IFLA_PROTINFO:
            isolated = _isolated(value)
    event = "del" if msg_type == RTM_DELLINK else "new"
    return PortVlans(event, index, name, master, vlans, isolated)


def parse_messages(
    data: bytes, wanted: Callable[[int], bool] | None = None
) -> Iterator[RawLink | RawAddress | PortVlans]:
    """Every link and address message in a buffer read from a netlink socket (only those
    whose link index is `wanted`, when given: the others are not decoded at all; a bridge
    port's VLAN notification always, since the bridge it names decides); an error message
    raises OSError."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, msg_type, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            return
        if msg_type == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", data, offset + _NLMSGHDR.size)
            if code:
                raise OSError(-code, os.strerror(-code))
        elif msg_type in (RTM_NEWLINK, RTM_DELLINK) and data[offset + _NLMSGHDR.size] == AF_BRIDGE:
            yield parse_port_vlans(data, offset, length, msg_type)
        elif msg_type in (RTM_NEWLINK, RTM_DELLINK):
            (index,) = _I32.unpack_from(data, offset + _NLMSGHDR.size + 4)  # ifinfomsg.index
            if wanted is None or wanted(index):
                yield parse_link(data, offset, length, msg_type)
        elif msg_type in (RTM_NEWADDR, RTM_DELADDR):
            (index,) = _U32.unpack_from(data, offset + _NLMSGHDR.size + 4)  # ifaddrmsg.index
            if wanted is None or wanted(index):
                yield RawAddress("del" if msg_type == RTM_DELADDR else "new", index)
        offset += (length + 3) & ~3


_buffers = threading.local()
RECV_SIZE = 1 << 17  # more than one dump chunk of the kernel's (it fills up to 32 KiB)


def receive(sock: socket.socket) -> bytes:
    """One datagram, read into a per-thread buffer: a fresh large bytes object per recv()
    costs more than decoding its messages."""
    buffer = getattr(_buffers, "buffer", None)
    if buffer is None:
        buffer = _buffers.buffer = bytearray(RECV_SIZE)
    size = sock.recv_into(buffer)
    return bytes(memoryview(buffer)[:size])


def _u32_attr(kind: int, value: int) -> bytes:
    return _RTATTR.pack(_RTATTR.size + 4, kind) + _U32.pack(value)


def dump_links(master: int | None = None) -> list[RawLink]:
    """One RTM_GETLINK dump of the calling thread's network namespace; with `master`, the
    kernel itself returns only that bridge's ports."""
    request = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    if master is not None:
        request += _u32_attr(IFLA_MASTER, master)
    with open_socket() as sock:
        return [
            parse_link(data, offset, length, msg_type)
            for data, offset, length, msg_type in _dump(sock, RTM_GETLINK, request)
            if msg_type == RTM_NEWLINK and data[offset + _NLMSGHDR.size] != AF_BRIDGE
        ]


def dump_port_vlans(sock: socket.socket | None = None) -> list[PortVlans]:
    """`bridge vlan show`: every bridge port's (and every bridge's own) VLAN membership, one
    RTM_GETLINK dump of family AF_BRIDGE with IFLA_EXT_MASK = RTEXT_FILTER_BRVLAN_COMPRESSED
    (net/core/rtnetlink.c rtnl_bridge_getlink; net/bridge/br_netlink.c br_fill_ifinfo lays
    each message out as the notifications the monitor decodes, IFLA_MASTER naming the
    bridge, also on the bridge's own). The kernel cannot filter this dump by bridge. On
    `sock` (an unsubscribed NETLINK_ROUTE socket of `open_socket`, which fixes the
    namespace), else on a socket of the calling thread's namespace."""
    if sock is None:
        with open_socket() as own:
            return dump_port_vlans(own)
    request = _IFINFOMSG.pack(AF_BRIDGE, 0, 0, 0, 0)
    request += _u32_attr(IFLA_EXT_MASK, RTEXT_FILTER_BRVLAN_COMPRESSED)
    return [
        parse_port_vlans(data, offset, length, msg_type)
        for data, offset, length, msg_type in _dump(sock, RTM_GETLINK, request)
        if msg_type == RTM_NEWLINK and data[offset + _NLMSGHDR.size] == AF_BRIDGE
    ]


def dump_addresses(sock: socket.socket | None = None) -> dict[int, list[str]]:
    """`ip address show`: every address of the namespace as "address/prefixlen", by link
    index, in the kernel's order (one RTM_GETADDR dump, family AF_UNSPEC). The address is
    IFA_LOCAL where there is one (on a point-to-point link IFA_ADDRESS is the peer's,
    rtnetlink(7)), else IFA_ADDRESS; IPv6 in the RFC 5952 form inet_ntop gives, as
    pyroute2 does."""
    if sock is None:
        with open_socket() as own:
            return dump_addresses(own)
    result: dict[int, list[str]] = {}
    request = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    for data, offset, length, msg_type in _dump(sock, RTM_GETADDR, request):
        if msg_type == RTM_NEWADDR:
            index, cidr = _address(data, offset, length)
            if cidr is not None:
                result.setdefault(index, []).append(cidr)
    return result


def _address(data: bytes, offset: int, length: int) -> tuple[int, str | None]:
    body = offset + _NLMSGHDR.size
    family, prefixlen, _flags, _scope, index = _IFADDRMSG.unpack_from(data, body)
    found: dict[int, bytes] = {}
    for attr, value in _attrs(data, body + _IFADDRMSG.size, offset + length):
        if attr in (IFA_ADDRESS, IFA_LOCAL):
            found[attr] = bytes(value)
    raw = found.get(IFA_LOCAL, found.get(IFA_ADDRESS))
    if raw is None or family not in (socket.AF_INET, socket.AF_INET6):
        return index, None
    return index, f"{socket.inet_ntop(family, raw)}/{prefixlen}"


def open_socket() -> socket.socket:
    """A NETLINK_ROUTE socket in the calling thread's network namespace, for requests."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    try:
        sock.bind((0, 0))
    except OSError:
        sock.close()
        raise
    return sock


_sequence = itertools.count(1)


def _dump(
    sock: socket.socket, msg_type: int, request: bytes
) -> Iterator[tuple[bytes, int, int, int]]:
    """Send one dump request (`request`: the body after the netlink header) and yield each
    message of its answer as (buffer, offset, length, type), up to its NLMSG_DONE; an error
    answer raises OSError. Each request has its own sequence number, so what is left of an
    earlier answer on a reused socket (a dump abandoned halfway) is skipped, never taken
    for this one's."""
    seq = next(_sequence) & 0xFFFFFFFF
    length = _NLMSGHDR.size + len(request)
    sock.send(_NLMSGHDR.pack(length, msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + request)
    while True:
        data = receive(sock)
        offset = 0
        while offset + _NLMSGHDR.size <= len(data):
            length, kind, _flags, msg_seq, _pid = _NLMSGHDR.unpack_from(data, offset)
            if length < _NLMSGHDR.size:
                raise OSError(errno.EBADMSG, f"a netlink message of length {length}")
            if msg_seq == seq:
                if kind == NLMSG_DONE:
                    return
                if kind == NLMSG_ERROR:
                    (code,) = _I32.unpack_from(data, offset + _NLMSGHDR.size)
                    raise OSError(-code, os.strerror(-code))
                yield data, offset, length, kind
            offset += (length + 3) & ~3


def get_link(name: str) -> RawLink | None:
    """One link by name (RTM_GETLINK with IFLA_IFNAME), or None when there is none."""
    encoded = name.encode() + b"\0"
    attr = _RTATTR.pack(_RTATTR.size + len(encoded), IFLA_IFNAME) + encoded
    attr += b"\0" * (-len(attr) % 4)
    ifinfo = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    length = _NLMSGHDR.size + len(ifinfo) + len(attr)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        sock.send(_NLMSGHDR.pack(length, RTM_GETLINK, NLM_F_REQUEST, 1, 0) + ifinfo + attr)
        try:
            found = [m for m in parse_messages(receive(sock)) if isinstance(m, RawLink)]
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                return None
            raise
    return found[0] if found else None
