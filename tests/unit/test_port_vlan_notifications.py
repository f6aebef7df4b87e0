"""The bridge's AF_BRIDGE link notifications decoded (app.host.rtnl.PortVlans) and judged
against what the VLAN worker settled (app.supervisor.trunks.TrunkWatch). The messages are
built as net/bridge/br_netlink.c br_fill_ifinfo lays them out (measured on Debian's 6.1:
test_vlan_drift.py proves the kernel side)."""

from __future__ import annotations

import socket
import struct

from app.domain.vlan_ports import Membership
from app.host import rtnl
from app.host.rtnl import PortVlans, RawLink
from app.supervisor.trunks import TrunkWatch

RANGE_BEGIN, RANGE_END, PVID, UNTAGGED = 0x8, 0x10, 0x2, 0x4


def attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def bridge_message(
    index: int, name: str, master: int, vlans: list[tuple[int, int]] | None
) -> bytes:
    body = struct.pack("=BxHiII", rtnl.AF_BRIDGE, 1, index, 0, 0)
    body += attr(rtnl.IFLA_IFNAME, name.encode() + b"\0")
    body += attr(rtnl.IFLA_MASTER, struct.pack("=I", master))
    if vlans is not None:
        infos = b"".join(attr(2, struct.pack("=HH", flags, vid)) for flags, vid in vlans)
        body += attr(rtnl.IFLA_AF_SPEC, infos)
    return struct.pack("=IHHII", 16 + len(body), rtnl.RTM_NEWLINK, 0, 0, 0) + body


def test_af_bridge_notifications_decode_to_port_vlans_with_ranges_expanded() -> None:
    data = bridge_message(
        4, "eth0", 2, [(PVID | UNTAGGED, 1), (RANGE_BEGIN, 10), (RANGE_END, 12), (0, 20)]
    )
    data += bridge_message(5, "tap0", 2, None)  # a port left with no VLAN: no IFLA_AF_SPEC
    first, second = rtnl.parse_messages(data, wanted=lambda index: False)
    assert first == PortVlans(
        "new",
        4,
        "eth0",
        2,
        {
            1: (True, True),
            10: (False, False),
            11: (False, False),
            12: (False, False),
            20: (False, False),
        },
    )
    assert second == PortVlans("new", 5, "tap0", 2, {})


def test_the_watch_wakes_for_planned_ports_that_differ_and_ports_that_joined() -> None:
    watch = TrunkWatch()
    planned = {"eth0": {10: Membership(10)}, "br0": {1: Membership(1, True, True)}}
    observed = {**planned, "odd0": {99: Membership(99)}}
    watch.settled(2, "trunk-id", "br0", planned, observed)
    assert watch.drifted(PortVlans("new", 4, "eth0", 2, {10: (False, False)})) is None
    assert watch.drifted(PortVlans("new", 4, "eth0", 2, {})) == "trunk-id"
    assert watch.drifted(PortVlans("new", 2, "br0", 2, {})) == "trunk-id"  # self
    assert watch.drifted(PortVlans("new", 9, "odd0", 2, {})) is None  # not planned
    # a port that joined since (a new tap on a VLAN) wakes the trunk, to get its PVID now
    assert watch.drifted(PortVlans("new", 11, "tap9", 2, {1: (True, True)})) == "trunk-id"
    assert watch.drifted(PortVlans("new", 4, "eth0", 3, {})) is None  # another bridge
    assert watch.drifted(PortVlans("del", 4, "eth0", 2, {})) is None  # left: a link event

    def bridge(filtering: int) -> RawLink:
        info = {rtnl.IFLA_BR_VLAN_FILTERING: bytes([filtering])}
        return RawLink("new", 2, 1, "br0", 1500, None, None, None, "bridge", info)

    assert watch.filtering_dropped(bridge(1)) is None
    assert watch.filtering_dropped(bridge(0)) == "trunk-id"
    watch.forget("trunk-id")
    assert watch.drifted(PortVlans("new", 4, "eth0", 2, {})) is None
    assert watch.filtering_dropped(bridge(0)) is None


def test_other_families_still_decode_as_links() -> None:
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 1, 4, 0, 0) + attr(rtnl.IFLA_IFNAME, b"eth0\0")
    data = struct.pack("=IHHII", 16 + len(body), rtnl.RTM_NEWLINK, 0, 0, 0) + body
    (link,) = rtnl.parse_messages(data)
    assert isinstance(link, RawLink) and link.name == "eth0"
