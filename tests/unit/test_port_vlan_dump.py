"""The VLAN membership dump's decoding (app.host.rtnl.dump_port_vlans, read by
app.host.vlans.VlanOps.memberships) against pyroute2's general decoder, which it replaced.

The messages are encoded by pyroute2's own ifinfmsg encoder, in both layouts the kernel
uses (net/bridge/br_netlink.c): one IFLA_BRIDGE_VLAN_INFO per VID (RTEXT_FILTER_BRVLAN,
what pyroute2's get_vlans asked for) and ranges of VIDs with equal flags
(RTEXT_FILTER_BRVLAN_COMPRESSED, br_fill_ifvlaninfo_compressed, what we ask for). The kernel
side is proven in tests/kernel/nested/test_vlan_host.py.
"""

from __future__ import annotations

import itertools
import socket
import struct
from typing import Any

import pytest
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from app.host import rtnl

PVID, UNTAGGED = rtnl.BRIDGE_VLAN_INFO_PVID, rtnl.BRIDGE_VLAN_INFO_UNTAGGED
BEGIN, END = rtnl.BRIDGE_VLAN_INFO_RANGE_BEGIN, rtnl.BRIDGE_VLAN_INFO_RANGE_END

# port -> (ifindex, [(vid, flags)]) on bridge br0 (ifindex 2); br0's own entry names itself
PORTS: dict[str, tuple[int, list[tuple[int, int]]]] = {
    "br0": (2, [(1, PVID | UNTAGGED), (10, 0)]),
    "eth0": (3, [(1, UNTAGGED), (10, 0), (11, 0), (12, 0), (20, 0), (30, PVID | UNTAGGED)]),
    "t1x0": (4, [(11, UNTAGGED), (12, UNTAGGED), (13, UNTAGGED), (14, PVID | UNTAGGED)]),
    "t1x1": (5, []),
}


def per_vid(vlans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [(flags, vid) for vid, flags in vlans]


def compressed(vlans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """br_fill_ifvlaninfo_compressed: consecutive VIDs with equal flags as BEGIN .. END."""
    runs: list[list[int]] = []  # [first, last, flags]
    for vid, flags in vlans:
        if runs and runs[-1][1] == vid - 1 and runs[-1][2] == flags:
            runs[-1][1] = vid
        else:
            runs.append([vid, vid, flags])
    infos = []
    for first, last, flags in runs:
        if first == last:
            infos.append((flags, first))
        else:
            infos += [(flags | BEGIN, first), (flags | END, last)]
    return infos


def encoded(name: str, index: int, infos: list[tuple[int, int]], seq: int = 1) -> bytes:
    msg = ifinfmsg()
    msg["header"]["type"] = rtnl.RTM_NEWLINK
    msg["header"]["sequence_number"] = seq
    msg["family"] = rtnl.AF_BRIDGE
    msg["index"] = index
    attrs: list[tuple[str, Any]] = [("IFLA_IFNAME", name), ("IFLA_MASTER", 2)]
    if infos:
        spec = [("IFLA_BRIDGE_VLAN_INFO", {"flags": f, "vid": v}) for f, v in infos]
        attrs.append(("IFLA_AF_SPEC", {"attrs": spec}))
    msg["attrs"] = attrs
    msg.encode()
    return bytes(msg.data)


def general(data: bytes) -> dict[str, dict[int, tuple[bool, bool]]]:
    """The replaced reading: pyroute2's decoder, then app.host.vlans' old _port_vlans."""
    msg = ifinfmsg(data)
    msg.decode()
    spec = msg.get_attr("IFLA_AF_SPEC")
    infos = () if spec is None else spec.get_attrs("IFLA_BRIDGE_VLAN_INFO")
    return {
        msg.get_attr("IFLA_IFNAME"): {
            int(i["vid"]): (bool(i["flags"] & PVID), bool(i["flags"] & UNTAGGED)) for i in infos
        }
    }


def minimal(data: bytes) -> dict[str, dict[int, tuple[bool, bool]]]:
    (port,) = rtnl.parse_messages(data)
    assert isinstance(port, rtnl.PortVlans) and port.name is not None
    return {port.name: port.vlans}


def test_both_layouts_decode_to_what_the_general_decoder_read() -> None:
    for name, (index, vlans) in PORTS.items():
        old = general(encoded(name, index, per_vid(vlans)))
        assert minimal(encoded(name, index, per_vid(vlans))) == old
        assert minimal(encoded(name, index, compressed(vlans))) == old
    assert compressed(PORTS["eth0"][1])[1:3] == [(BEGIN, 10), (END, 12)]  # a real range


def test_a_reused_sockets_stale_answer_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    """What an abandoned dump left on the socket (sequence 6) is not this dump's (7)."""
    monkeypatch.setattr(rtnl, "_sequence", itertools.count(7))
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with ours, kernel:
        kernel.send(encoded("old0", 9, [(0, 99)], seq=6) + done(6))
        kernel.send(encoded("eth0", 3, [(0, 10)], seq=7))
        kernel.send(encoded("eth1", 4, [], seq=7) + done(7))
        ports = rtnl.dump_port_vlans(ours)
        request = kernel.recv(4096)
    assert [(p.name, p.vlans) for p in ports] == [("eth0", {10: (False, False)}), ("eth1", {})]
    length, kind, flags, seq, _pid = struct.unpack_from("=IHHII", request)
    assert (length, kind, flags, seq) == (len(request), rtnl.RTM_GETLINK, 0x301, 7)
    assert request[16] == rtnl.AF_BRIDGE


def done(seq: int) -> bytes:
    return struct.pack("=IHHII", 20, rtnl.NLMSG_DONE, 0, seq, 0) + b"\0" * 4
