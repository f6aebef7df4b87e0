"""Anti-spoofing rules on the real kernel of a throwaway namespace (app.supervisor.
port_security over app.host.nft): two NICs' chains loaded and read back through `nft -j
list`, frames from a "guest" namespace (a veth named like the NIC's tap, a port of a bridge)
dropped and counted; one NIC's change touches only its chain (the other's counters go on);
a table flushed, deleted or edited by hand is repaired by a full pass, chain by chain."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator

import pytest

from app.db.repositories import ProtectedNic
from app.domain import port_security as ps
from app.host import nft
from app.supervisor.port_security import PortSecuritySync, plan
from tests.netns_tools import in_namespace, in_netns, ip, throwaway_netns

MAC_A = "52:54:00:aa:00:01"
MAC_B = "52:54:00:bb:00:02"
GATEWAY = "10.77.0.1"


def _nic(tap: str, mac: str, ipv4: str | None, allowed: tuple[str, ...] = ()) -> ProtectedNic:
    return ProtectedNic(tap, "vm", 0, tap, mac, ipv4, None, allowed, None)


@contextlib.contextmanager
def guest(ns: str, tap: str, mac: str) -> Iterator[str]:
    """A namespace whose eth0 (MAC `mac`) is cabled by a veth to bridge br0 of `ns`; the
    bridge's end is named `tap`, as a VM NIC's tap would be."""
    with throwaway_netns() as g:
        ip(ns, "link", "add", tap, "type", "veth", "peer", "name", "eth0", "netns", g)
        ip(ns, "link", "set", tap, "master", "br0", "up")
        ip(g, "link", "set", "eth0", "address", mac, "up")
        yield g


@pytest.fixture
def lan(netns: str) -> Iterator[tuple[str, str, str]]:
    ip(netns, "link", "add", "br0", "type", "bridge", "forward_delay", "0", "stp_state", "0")
    ip(netns, "addr", "add", f"{GATEWAY}/24", "dev", "br0")
    ip(netns, "link", "set", "br0", "up")
    with guest(netns, "kva-0", MAC_A) as a, guest(netns, "kvb-0", MAC_B) as b:
        ip(a, "addr", "add", "10.77.0.10/24", "dev", "eth0")
        ip(b, "addr", "add", "10.77.0.20/24", "dev", "eth0")
        yield netns, a, b


def listing(ns: str) -> list[dict[str, object]] | None:
    return in_namespace(ns, lambda: nft.list_table(ps.FAMILY, ps.TABLE))


def live(ns: str) -> ps.LiveTable:
    found = listing(ns)
    assert found is not None, "our bridge table is missing"
    return ps.read_table(found)


def handles(ns: str, chain: str) -> list[int]:
    return [
        int(item["rule"]["handle"])  # type: ignore[index,call-overload]
        for item in listing(ns) or []
        if "rule" in item and item["rule"]["chain"] == chain  # type: ignore[index]
    ]


def pings(ns: str, target: str, count: int = 1) -> bool:
    result = in_netns(ns, "busybox", "ping", "-c", str(count), "-W", "1", target, check=False)
    return result.returncode == 0


def dropped(ns: str, tap: str, reason: str) -> int:
    return ps.dropped(live(ns), tap).get(reason, [0, 0])[0]


def test_two_nics_one_change_drift_repaired(lan: tuple[str, str, str]) -> None:
    ns, a, b = lan
    sync = PortSecuritySync(time.monotonic)
    nics = [_nic("kva-0", MAC_A, "10.77.0.10"), _nic("kvb-0", MAC_B, "10.77.0.20")]

    def run(nics: list[ProtectedNic], full: bool = False) -> dict[str, str | None]:
        return in_namespace(ns, lambda: sync.sync([plan(n, None) for n in nics], full))

    assert run(nics, full=True) == {"kva-0": None, "kvb-0": None}
    table = live(ns)
    for nic in nics:
        assert ps.chain_matches(table, plan(nic, None).rules), nic.tap
    assert table.elements == {"kva-0": "port-kva-0", "kvb-0": "port-kvb-0"}
    # their own addresses pass; B spoofing A's address is dropped (its ARP first)
    assert pings(a, GATEWAY) and pings(b, GATEWAY)
    ip(b, "addr", "add", "10.77.0.10/32", "dev", "eth0")  # an address B has no right to
    spoof = ("busybox", "ping", "-c", "2", "-W", "1", "-I", "10.77.0.10", GATEWAY)
    assert in_netns(b, *spoof, check=False).returncode != 0
    spoofed = dropped(ns, "kvb-0", "arp") + dropped(ns, "kvb-0", "ipv4")
    assert spoofed > 0, live(ns).counters
    assert dropped(ns, "kva-0", "arp") == 0
    # B changes its MAC: every frame dropped as `mac`
    ip(b, "link", "set", "eth0", "address", "52:54:00:bb:00:99")
    assert not pings(b, GATEWAY, 2)
    mac_drops = dropped(ns, "kvb-0", "mac")
    assert mac_drops > 0
    ip(b, "link", "set", "eth0", "address", MAC_B)

    # one NIC changes (A gets another address): only A's chain is loaded again
    b_handles = handles(ns, "port-kvb-0")
    a_handles = handles(ns, "port-kva-0")
    nics[0] = _nic("kva-0", MAC_A, "10.77.0.11")
    assert run(nics) == {"kva-0": None, "kvb-0": None}
    assert handles(ns, "port-kvb-0") == b_handles  # untouched: the same rules
    assert handles(ns, "port-kva-0") != a_handles
    # B's counters not reset (a late frame of B's with the old MAC may still add to them)
    assert dropped(ns, "kvb-0", "mac") >= mac_drops > 0
    assert ps.chain_matches(live(ns), plan(nics[0], None).rules)
    assert not pings(a, GATEWAY, 2)  # 10.77.0.10 is no longer A's
    assert dropped(ns, "kva-0", "arp") + dropped(ns, "kva-0", "ipv4") > 0

    # a NIC goes: its chain and element go, the other stays
    assert run(nics[1:]) == {"kvb-0": None}
    assert live(ns).elements == {"kvb-0": "port-kvb-0"}
    assert "port-kva-0" not in live(ns).chains
    assert handles(ns, "port-kvb-0") == b_handles

    # drift: B's chain edited by hand -> a full pass reloads that chain
    in_netns(
        ns, "nft", "delete", "rule", "bridge", "kvmnetd", "port-kvb-0", "handle", str(b_handles[0])
    )
    nics = [_nic("kva-0", MAC_A, "10.77.0.10"), nics[1]]
    in_namespace(ns, lambda: nft.load(ps.render_changes([plan(nics[0], None).rules], [])))
    a_handles = handles(ns, "port-kva-0")
    sync.loaded = dict(sync.loaded or {}, **{"kva-0": plan(nics[0], None).rules})
    run(nics)  # a quiet pass does not read the table back
    assert not ps.chain_matches(live(ns), plan(nics[1], None).rules)
    run(nics, full=True)
    assert ps.chain_matches(live(ns), plan(nics[1], None).rules)
    assert handles(ns, "port-kva-0") == a_handles  # the chain that had not drifted stays
    assert sync.drift_repairs == 1

    # drift: the table flushed by hand (chains stay empty, map and base rule gone)
    in_netns(ns, "nft", "flush", "table", "bridge", "kvmnetd")
    assert not ps.in_place(live(ns), plan(nics[0], None).rules)
    run(nics, full=True)
    for nic in nics:
        assert ps.in_place(live(ns), plan(nic, None).rules)
    # deleted by hand: back too
    in_netns(ns, "nft", "delete", "table", "bridge", "kvmnetd")
    run(nics, full=True)
    for nic in nics:
        assert ps.chain_matches(live(ns), plan(nic, None).rules)
    # a stale chain of ours (its NIC is gone) is removed at a full pass
    in_namespace(ns, lambda: nft.load(ps.render_changes([ps.port_rules("kvz-0", MAC_A, [])], [])))
    run(nics, full=True)
    assert live(ns).taps() == {"kva-0", "kvb-0"}
    # no protected NIC left (a quiet pass): the table goes
    run([])
    assert listing(ns) is None
    run([], full=True)  # and stays away
    assert listing(ns) is None
    # the NAT table (inet) was never touched by any of this
    result = in_netns(ns, "nft", "-j", "list", "tables")
    tables = [i["table"] for i in json.loads(result.stdout)["nftables"] if "table" in i]
    assert all(t["family"] != "inet" for t in tables)


def test_a_nic_that_cannot_load_fails_alone(netns: str) -> None:
    """A NIC whose rules nft refuses is recorded on that NIC; the others are loaded."""
    sync = PortSecuritySync(time.monotonic)
    good = plan(_nic("kvg-0", MAC_A, "10.77.0.10"), None)
    # a tap name nft refuses as a map key of type ifname (longer than IFNAMSIZ) stands in
    # for any per-NIC refusal
    bad = plan(_nic("x" * 20, MAC_B, "10.77.0.20"), None)
    reasons = in_namespace(netns, lambda: sync.sync([good, bad], True))
    assert reasons[good.nic.nic_id] is None
    assert (reasons[bad.nic.nic_id] or "").startswith("nftables: "), reasons
    assert ps.in_place(live(netns), good.rules)
    # the next passes do not try the refused NIC again before its backoff is due (a retry
    # reloads every NIC): the good chain is left alone, the reason stays
    handles = [r["rule"]["handle"] for r in listing(netns) or [] if "rule" in r]  # type: ignore[index]
    for full in (False, True):
        again = in_namespace(netns, lambda f=full: sync.sync([good, bad], f))
        assert again == reasons
    assert [r["rule"]["handle"] for r in listing(netns) or [] if "rule" in r] == handles  # type: ignore[index]
    # changed rules are tried at once (here: still refused)
    worse = plan(_nic("x" * 20, MAC_B, "10.77.0.21"), None)
    assert in_namespace(netns, lambda: sync.sync([good, worse], False))[worse.nic.nic_id]


def test_addresses_that_cannot_be_parsed_are_left_out_and_named() -> None:
    planned = plan(_nic("kva-0", MAC_A, "10.77.0.10", ("not-an-address", "192.0.2.0/24")), None)
    assert planned.rules.ipv4 == ("10.77.0.10", "192.0.2.0/24")
    assert planned.problem is not None and "not-an-address" in planned.problem
