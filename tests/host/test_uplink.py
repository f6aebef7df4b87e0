"""Moving a NIC's IP configuration onto a bridge and back, on the real kernel: a "LAN"
namespace with the gateway, joined by a veth whose other end plays the host's eth0."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import icmplib
import pytest
from pyroute2 import IPRoute

from app.domain.uplinks import NicConfig, attach_steps, restore_steps
from app.host.uplink import MoveLog, attach, link_facts, probe, restore, snapshot
from tests.netns_tools import in_namespace, ip, throwaway_netns

T = TypeVar("T")
GATEWAY = "10.60.0.1"
HOST = "10.60.0.10"


@pytest.fixture
def lan() -> Iterator[tuple[str, str]]:
    """(host namespace, LAN namespace): eth0 10.60.0.10/24 (plus a secondary address and a
    static route) with the default route via the LAN's 10.60.0.1; an empty bridge br0."""
    with throwaway_netns() as host, throwaway_netns() as lan_ns:
        ip(host, "link", "add", "eth0", "type", "veth", "peer", "name", "lan0", "netns", lan_ns)
        ip(lan_ns, "addr", "add", f"{GATEWAY}/24", "dev", "lan0")
        ip(lan_ns, "link", "set", "lan0", "up")
        ip(host, "addr", "add", f"{HOST}/24", "dev", "eth0")
        ip(host, "addr", "add", "10.60.0.11/24", "dev", "eth0", "label", "eth0:web")
        ip(host, "link", "set", "eth0", "up")
        ip(host, "route", "add", "default", "via", GATEWAY, "metric", "100")
        ip(host, "route", "add", "172.16.5.0/24", "via", GATEWAY, "metric", "7", "proto", "static")
        ip(host, "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0")
        ip(host, "link", "set", "br0", "up")
        yield host, lan_ns


def in_ns(ns: str, fn: Callable[[IPRoute], T]) -> T:
    """`fn` with a netlink socket of `ns`."""

    def run() -> T:
        with IPRoute() as ipr:
            return fn(ipr)

    return in_namespace(ns, run)


def essence(config: NicConfig) -> tuple[object, ...]:
    return (
        config.mac,
        sorted((a.essence() for a in config.addresses), key=repr),
        sorted((r.essence() for r in config.routes), key=repr),
    )


def pings(ns: str, address: str) -> bool:
    """One ICMP echo from inside `ns` is answered (icmplib, privileged: we are root)."""
    return in_ns(ns, lambda _: icmplib.ping(address, count=1, timeout=1, privileged=True).is_alive)


def test_attach_moves_everything_and_restore_puts_it_back_bit_for_bit(
    lan: tuple[str, str],
) -> None:
    host, lan_ns = lan
    before = in_ns(host, lambda ipr: snapshot(ipr, "eth0"))
    assert {a.cidr for a in before.addresses} == {f"{HOST}/24", "10.60.0.11/24"}
    assert before.gateway == GATEWAY
    bridge_mac = in_ns(host, lambda ipr: link_facts(ipr, "br0")).mac  # type: ignore[union-attr]
    planned = attach_steps(before, "br0", before.mac)

    say = MoveLog()
    in_ns(host, lambda ipr: attach(ipr, before, "br0", before.mac, say))
    assert say.steps == planned
    moved = in_ns(host, lambda ipr: snapshot(ipr, "br0"))
    assert {a.cidr for a in moved.addresses} == {f"{HOST}/24", "10.60.0.11/24"}
    assert [a.label for a in moved.addresses if a.address == "10.60.0.11"] == ["br0:web"]
    defaults = [r for r in moved.routes if r.dst is None]
    assert [(r.gateway, r.priority) for r in defaults] == [(GATEWAY, 100)]
    assert moved.mac == before.mac  # the bridge took the NIC's MAC
    eth0 = in_ns(host, lambda ipr: snapshot(ipr, "eth0"))
    assert eth0.addresses == () and eth0.routes == ()
    facts = in_ns(host, lambda ipr: (link_facts(ipr, "eth0"), link_facts(ipr, "br0")))
    assert facts[0] is not None and facts[1] is not None
    assert facts[0].master == facts[1].index
    assert pings(lan_ns, HOST)  # the LAN still reaches the host, now through br0
    assert in_ns(host, lambda _: probe(GATEWAY, 3))
    assert not in_ns(host, lambda _: probe("10.60.0.99", 1))

    say = MoveLog()
    in_ns(host, lambda ipr: restore(ipr, before, "br0", bridge_mac, say))
    assert say.steps == restore_steps(before, "br0", bridge_mac)
    after = in_ns(host, lambda ipr: snapshot(ipr, "eth0"))
    assert essence(after) == essence(before)
    bridge = in_ns(host, lambda ipr: snapshot(ipr, "br0"))
    assert bridge.addresses == () and bridge.routes == () and bridge.mac == bridge_mac
    assert in_ns(host, lambda ipr: link_facts(ipr, "eth0")).master is None  # type: ignore[union-attr]
    # restoring again changes nothing (it also finishes an interrupted move or restore)
    in_ns(host, lambda ipr: restore(ipr, before, "br0", bridge_mac, MoveLog()))
    assert essence(in_ns(host, lambda ipr: snapshot(ipr, "eth0"))) == essence(before)
    assert pings(lan_ns, HOST)
