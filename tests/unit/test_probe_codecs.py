"""The path probe's pure parts: DHCP frames (RFC 2131/2132) and the nftables suspects."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address
from typing import Any

from app.domain import dhcp
from app.domain.nft_suspects import CONDITIONAL, POLICY, UNCONDITIONAL, suspects

MAC = bytes.fromhex("020000000001")


def offer_frame(xid: int, message_type: int = dhcp.DHCPOFFER) -> bytes:
    """A DHCPOFFER as a server sends it (built independently of the module's encoder)."""
    bootp = struct.pack("!BBBBIHH", 2, 1, 6, 0, xid, 0, 0x8000)
    bootp += bytes(4) + IPv4Address("10.0.0.50").packed + bytes(8) + MAC.ljust(16, b"\0")
    bootp += bytes(192) + dhcp.MAGIC_COOKIE
    options = bytes([53, 1, message_type, 54, 4, 10, 0, 0, 1, 1, 4, 255, 255, 255, 0])
    options += bytes([3, 4, 10, 0, 0, 1, 6, 8, 10, 0, 0, 1, 10, 0, 0, 2, 0, 255])
    payload = bootp + options
    udp = struct.pack("!HHHH", 67, 68, 8 + len(payload), 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, bytes(4), b"\xff" * 4
    )
    return b"\xff" * 6 + bytes.fromhex("020000000099") + b"\x08\x00" + ip + udp


def test_discover_is_a_valid_broadcast_request() -> None:
    frame = dhcp.discover_frame(MAC, 0x12345678)
    assert frame[:6] == b"\xff" * 6 and frame[6:12] == MAC and frame[12:14] == b"\x08\x00"
    ip = frame[14:34]
    assert dhcp._checksum(ip) == 0  # a correct header sums to zero (RFC 1071)
    assert struct.unpack("!HH", frame[34:38]) == (68, 67)
    bootp = frame[42:]
    assert bootp[0] == 1 and struct.unpack("!I", bootp[4:8])[0] == 0x12345678
    assert struct.unpack("!H", bootp[10:12])[0] & 0x8000  # broadcast flag
    assert dhcp.parse_options(bootp[240:])[53] == bytes([dhcp.DHCPDISCOVER])


def test_offer_is_read_and_others_are_ignored() -> None:
    offer = dhcp.parse_offer(offer_frame(7), 7)
    assert offer == dhcp.Offer(
        address=IPv4Address("10.0.0.50"),
        server=IPv4Address("10.0.0.1"),
        prefixlen=24,
        routers=(IPv4Address("10.0.0.1"),),
        dns_servers=(IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2")),
    )
    assert dhcp.parse_offer(offer_frame(8), 7) is None  # another transaction
    assert dhcp.parse_offer(offer_frame(7, message_type=5), 7) is None  # an ACK
    assert dhcp.parse_offer(offer_frame(7)[:60], 7) is None  # truncated
    assert dhcp.parse_offer(b"", 7) is None


def chain(table: str, name: str, hook: str | None = None, policy: str = "accept") -> Any:
    body: dict[str, Any] = {"family": "inet", "table": table, "name": name}
    if hook:
        body |= {"hook": hook, "policy": policy, "type": "filter", "prio": 0}
    return {"chain": body}


def rule(table: str, chain_name: str, handle: int, *expr: Any) -> Any:
    body = {"family": "inet", "table": table, "chain": chain_name, "handle": handle}
    return {"rule": body | {"expr": list(expr)}}


MATCH = {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "udp"}}


def test_suspects_are_ranked_and_ours_is_never_one() -> None:
    objects = [
        {"metainfo": {}},
        chain("fw", "input", "input", policy="drop"),
        rule("fw", "input", 3, MATCH, {"drop": None}),
        rule("fw", "input", 4, MATCH, {"jump": {"target": "deny"}}),
        chain("fw", "deny"),
        rule("fw", "deny", 9, {"counter": None}, {"reject": None}),
        chain("other", "fwd", "forward"),
        rule("other", "fwd", 5, {"counter": None}, {"drop": None}),
        chain("kvmnetd", "input", "input", policy="drop"),
        rule("kvmnetd", "input", 1, {"drop": None}),
    ]
    found = suspects(objects, [("inet", "input")], ("inet", "kvmnetd"))
    assert [(s.table, s.rank) for s in found] == [
        ("fw", POLICY),
        ("fw", CONDITIONAL),
        ("fw", CONDITIONAL),  # unconditional in `deny`, but only reached under a match
    ]
    assert "handle 9 in chain deny: reject" in found[2].why
    forward = suspects(objects, [("inet", "forward")], ("inet", "kvmnetd"))
    assert [(s.chain, s.rank) for s in forward] == [("fwd", UNCONDITIONAL)]
