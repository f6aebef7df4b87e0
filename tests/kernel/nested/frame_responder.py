"""A tiny guest on a tap, for nested tests: it opens the tap as qemu would (/dev/net/tun,
TUNSETIFF IFF_TAP|IFF_NO_PI, Documentation/networking/tuntap.rst) and answers ARP requests
for its IPv4 address (RFC 826) and ICMP echo requests to it (RFC 792); nothing else.

Usage (in the tap's namespace): python frame_responder.py TAP MAC IPV4. Prints `ready` once
it holds the tap; runs until killed.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import struct
import sys

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000
ETH_ARP, ETH_IPV4 = b"\x08\x06", b"\x08\x00"


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _arp(frame: bytes, mac: bytes, ip: bytes) -> bytes | None:
    arp = frame[14:42]
    if len(arp) < 28 or struct.unpack("!H", arp[6:8])[0] != 1 or arp[24:28] != ip:
        return None  # not a request for us
    sender_mac, sender_ip = arp[8:14], arp[14:18]
    reply = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2) + mac + ip + sender_mac + sender_ip
    return sender_mac + mac + ETH_ARP + reply


def _echo(frame: bytes, mac: bytes, ip: bytes) -> bytes | None:
    header_len = (frame[14] & 0x0F) * 4
    header = bytearray(frame[14 : 14 + header_len])
    if len(header) < 20 or header[9] != 1 or bytes(header[16:20]) != ip:
        return None
    total = struct.unpack("!H", header[2:4])[0]
    icmp = bytearray(frame[14 + header_len : 14 + total])
    if not icmp or icmp[0] != 8:
        return None
    icmp[0], icmp[2:4] = 0, b"\0\0"  # echo reply
    icmp[2:4] = struct.pack("!H", checksum(bytes(icmp)))
    header[12:16], header[16:20] = header[16:20], header[12:16]
    header[8], header[10:12] = 64, b"\0\0"
    header[10:12] = struct.pack("!H", checksum(bytes(header)))
    return frame[6:12] + mac + ETH_IPV4 + bytes(header) + bytes(icmp)


def answer(frame: bytes, mac: bytes, ip: bytes) -> bytes | None:
    """The reply to one Ethernet frame, or None."""
    kind = frame[12:14]
    if kind == ETH_ARP:
        return _arp(frame, mac, ip)
    if kind == ETH_IPV4:
        return _echo(frame, mac, ip)
    return None


def main(tap: str, mac_text: str, ip_text: str) -> None:
    mac = bytes.fromhex(mac_text.replace(":", ""))
    ip = ipaddress.IPv4Address(ip_text).packed
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", tap.encode(), IFF_TAP | IFF_NO_PI))
    print("ready", flush=True)
    while True:
        reply = answer(os.read(fd, 65536), mac, ip)
        if reply is not None:
            os.write(fd, reply)


if __name__ == "__main__":
    main(*sys.argv[1:4])
