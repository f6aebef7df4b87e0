"""A DHCP client's first exchange as raw Ethernet frames: DHCPDISCOVER out, DHCPOFFER in.

Pure encoding and decoding for the network path probe (app.host.path_probe), which sends
from a throwaway port on a network's bridge through an AF_PACKET socket: no address, route
or rp_filter on the probe's side can then get in the way of what is being tested (the path
to our dnsmasq). Formats: BOOTP/DHCP message and options (RFC 2131, RFC 2132), IPv4 header
(RFC 791, checksum per RFC 1071), UDP (RFC 768; a zero checksum means "none" over IPv4).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

ETH_P_IP = 0x0800
BROADCAST_MAC = b"\xff" * 6
CLIENT_PORT = 68
SERVER_PORT = 67
MAGIC_COOKIE = b"\x63\x82\x53\x63"
BOOTREQUEST, BOOTREPLY = 1, 2
HTYPE_ETHERNET = 1
FLAG_BROADCAST = 0x8000  # RFC 2131 4.1: the server answers to the broadcast address

# RFC 2132 option codes
OPT_PAD, OPT_END = 0, 255
OPT_SUBNET_MASK, OPT_ROUTER, OPT_DNS = 1, 3, 6
OPT_MESSAGE_TYPE, OPT_SERVER_ID, OPT_PARAMETERS = 53, 54, 55
DHCPDISCOVER, DHCPOFFER = 1, 2

_BOOTP = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")  # the fixed 236 bytes before options
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")


@dataclass(frozen=True)
class Offer:
    """What a DHCPOFFER proposes: the address, and the server's own options."""

    address: IPv4Address  # yiaddr
    server: IPv4Address | None  # option 54, the server identifier
    prefixlen: int | None  # from option 1
    routers: tuple[IPv4Address, ...]  # option 3
    dns_servers: tuple[IPv4Address, ...]  # option 6


def _checksum(header: bytes) -> int:
    """The Internet checksum (RFC 1071) of an even-length header."""
    total: int = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def discover_frame(mac: bytes, xid: int) -> bytes:
    """A broadcast DHCPDISCOVER from `mac` (6 bytes) with transaction id `xid`, as a whole
    Ethernet frame from 0.0.0.0:68 to 255.255.255.255:67, asking for the broadcast flag."""
    options = (
        bytes([OPT_MESSAGE_TYPE, 1, DHCPDISCOVER])
        + bytes([OPT_PARAMETERS, 3, OPT_SUBNET_MASK, OPT_ROUTER, OPT_DNS])
        + bytes([OPT_END])
    )
    bootp = _BOOTP.pack(
        BOOTREQUEST, HTYPE_ETHERNET, 6, 0, xid, 0, FLAG_BROADCAST,
        bytes(4), bytes(4), bytes(4), bytes(4), mac.ljust(16, b"\0"), bytes(64), bytes(128),
    )  # fmt: skip
    payload = bootp + MAGIC_COOKIE + options
    udp = _UDP.pack(CLIENT_PORT, SERVER_PORT, _UDP.size + len(payload), 0) + payload
    source, destination = bytes(4), b"\xff" * 4
    header = _IPV4.pack(0x45, 0, _IPV4.size + len(udp), 0, 0, 64, 17, 0, source, destination)
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return BROADCAST_MAC + mac + struct.pack("!H", ETH_P_IP) + header + udp


def parse_offer(frame: bytes, xid: int) -> Offer | None:
    """The DHCPOFFER for transaction `xid` in an Ethernet frame, or None for any other frame
    (another protocol, another transaction, another message type, or malformed)."""
    if len(frame) < 14 + _IPV4.size or frame[12:14] != struct.pack("!H", ETH_P_IP):
        return None
    ip = frame[14:]
    header_length = (ip[0] & 0x0F) * 4
    if ip[0] >> 4 != 4 or ip[9] != 17 or len(ip) < header_length + _UDP.size:
        return None
    source_port, destination_port, _, _ = _UDP.unpack_from(ip, header_length)
    if (source_port, destination_port) != (SERVER_PORT, CLIENT_PORT):
        return None
    message = ip[header_length + _UDP.size :]
    if len(message) < _BOOTP.size + len(MAGIC_COOKIE):
        return None
    fields = _BOOTP.unpack_from(message)
    if fields[0] != BOOTREPLY or fields[4] != xid:
        return None
    if message[_BOOTP.size : _BOOTP.size + 4] != MAGIC_COOKIE:
        return None
    options = parse_options(message[_BOOTP.size + 4 :])
    if options.get(OPT_MESSAGE_TYPE) != bytes([DHCPOFFER]):
        return None
    mask, server = options.get(OPT_SUBNET_MASK, b""), options.get(OPT_SERVER_ID, b"")
    return Offer(
        address=IPv4Address(fields[8]),
        server=IPv4Address(server) if len(server) == 4 else None,
        prefixlen=bin(int.from_bytes(mask, "big")).count("1") if len(mask) == 4 else None,
        routers=_addresses(options.get(OPT_ROUTER, b"")),
        dns_servers=_addresses(options.get(OPT_DNS, b"")),
    )


def parse_options(data: bytes) -> dict[int, bytes]:
    """DHCP options (RFC 2132 3): code, length, value; pad and end carry no length. A
    truncated option ends the list."""
    options: dict[int, bytes] = {}
    i = 0
    while i < len(data):
        code = data[i]
        if code == OPT_END:
            break
        if code == OPT_PAD:
            i += 1
            continue
        if i + 1 >= len(data) or i + 2 + data[i + 1] > len(data):
            break
        options[code] = options.get(code, b"") + data[i + 2 : i + 2 + data[i + 1]]
        i += 2 + data[i + 1]
    return options


def _addresses(value: bytes) -> tuple[IPv4Address, ...]:
    return tuple(IPv4Address(value[i : i + 4]) for i in range(0, len(value) - 3, 4))
