"""The anti-spoofing planner (app.domain.port_security): pure, plain data in and out."""

from __future__ import annotations

from typing import Any

import pytest

from app.domain import port_security as ps

MAC = "52:54:00:12:34:56"


def _shape(port: ps.PortRules) -> list[tuple[str, list[tuple[str, str, Any]], str]]:
    """Each rule as (comment, [(protocol field, op, right)], verdict): nft's own words."""
    shaped = []
    for rule in ps.chain_body(port):
        matches = []
        for expr in rule["expr"][:-1]:
            if "counter" in expr:
                continue
            match = expr["match"]
            payload = match["left"]["payload"]
            matches.append(
                (f"{payload['protocol']} {payload['field']}", match["op"], match["right"])
            )
        shaped.append((str(rule["comment"]), matches, next(iter(rule["expr"][-1]))))
    return shaped


def _counted(port: ps.PortRules) -> list[bool]:
    return [any("counter" in e for e in rule["expr"]) for rule in ps.chain_body(port)]


@pytest.mark.parametrize(
    ("mac", "address"),
    [
        # RFC 4291 appendix A: invert the U/L bit, insert ff:fe
        ("52:54:00:12:34:56", "fe80::5054:ff:fe12:3456"),
        ("00:00:00:00:00:00", "fe80::200:ff:fe00:0"),
        ("02:aa:bb:cc:dd:ee", "fe80::aa:bbff:fecc:ddee"),
        ("FE:FF:FF:FF:FF:FF", "fe80::fcff:ffff:feff:ffff"),
    ],
)
def test_link_local_is_the_eui64_address(mac: str, address: str) -> None:
    assert ps.link_local(mac) == address


def test_link_local_refuses_what_is_not_a_mac() -> None:
    with pytest.raises(ValueError):
        ps.link_local("52:54:00:12:34")


def test_addresses_are_gathered_split_by_family_and_deduplicated() -> None:
    port = ps.port_rules(
        "kv1-0",
        MAC.upper(),
        ["10.0.0.5", None, "10.0.0.5"],
        ["192.0.2.0/24", "2001:db8::/64", "10.0.0.7/32", "2001:db8:1::1"],
    )
    assert port == ps.PortRules(
        tap="kv1-0",
        mac=MAC,
        ipv4=("10.0.0.5", "10.0.0.7", "192.0.2.0/24"),
        ipv6=("2001:db8::/64", "2001:db8:1::1"),
    )
    assert port.chain == "port-kv1-0"


def test_a_nic_with_addresses_may_send_from_them_and_nothing_else() -> None:
    port = ps.port_rules("kv1-0", MAC, ["10.0.0.5", "10.0.0.9"])
    assert _shape(port) == [
        ("mac", [("ether saddr", "!=", MAC)], "drop"),
        ("dhcp-server", [("udp sport", "==", 67)], "drop"),
        ("dhcp-server", [("udp sport", "==", 547)], "drop"),
        ("router-advert", [("icmpv6 type", "==", "nd-router-advert")], "drop"),
        ("arp", [("arp saddr ether", "!=", MAC)], "drop"),
        ("arp", [("arp saddr ip", "==", "0.0.0.0")], "accept"),  # RFC 5227 probes
        ("arp", [("arp saddr ip", "==", "10.0.0.5")], "accept"),
        ("arp", [("arp saddr ip", "==", "10.0.0.9")], "accept"),
        ("arp", [("ether type", "==", "arp")], "drop"),
        (
            "dhcp-client",
            [("ip saddr", "==", "0.0.0.0"), ("udp sport", "==", 68), ("udp dport", "==", 67)],
            "accept",
        ),
        ("ipv4", [("ip saddr", "==", "10.0.0.5")], "accept"),
        ("ipv4", [("ip saddr", "==", "10.0.0.9")], "accept"),
        ("ipv4", [("ether type", "==", "ip")], "drop"),
        ("ipv6", [("ip6 saddr", "==", "::")], "accept"),  # DAD (RFC 4862 5.4)
        ("ipv6", [("ip6 saddr", "==", "fe80::5054:ff:fe12:3456")], "accept"),
        ("ipv6", [("ether type", "==", "ip6")], "drop"),
        ("other", [], "drop"),
    ]
    # every drop is counted, no accept is
    assert _counted(port) == [verdict == "drop" for _, _, verdict in _shape(port)]
    assert set(ps.DROP_REASONS) == {c for c, _, v in _shape(port) if v == "drop"}


def test_a_nic_without_an_address_sends_only_dhcp_requests_over_ipv4() -> None:
    shape = _shape(ps.port_rules("kv1-0", MAC, [None]))
    assert [m for c, m, v in shape if c == "ipv4"] == [[("ether type", "==", "ip")]]
    assert [m for c, m, v in shape if c == "arp" and v == "accept"] == [
        [("arp saddr ip", "==", "0.0.0.0")]
    ]
    assert ("dhcp-client", "accept") in {(c, v) for c, _, v in shape}


def test_prefixes_are_nft_prefix_objects() -> None:
    shape = _shape(ps.port_rules("kv1-0", MAC, [], ["192.0.2.0/24", "2001:db8::/64"]))
    prefix4 = {"prefix": {"addr": "192.0.2.0", "len": 24}}
    prefix6 = {"prefix": {"addr": "2001:db8::", "len": 64}}
    assert ("ipv4", [("ip saddr", "==", prefix4)], "accept") in shape
    assert ("arp", [("arp saddr ip", "==", prefix4)], "accept") in shape
    assert ("ipv6", [("ip6 saddr", "==", prefix6)], "accept") in shape


def test_render_all_replaces_the_table_with_a_vmap_to_one_chain_per_nic() -> None:
    ports = [ps.port_rules("kv2-0", "52:54:00:00:00:02", []), ps.port_rules("kv1-0", MAC, [])]
    commands = ps.render_all(ports)
    assert commands[:2] == ps.removal()
    assert {"add": {"table": {"family": "bridge", "name": "kvmnetd"}}} in commands
    base = [c["add"]["chain"] for c in commands if "chain" in c.get("add", {})]
    assert base[0]["hook"] == "prerouting" and base[0]["prio"] == -200
    elements = [c["add"]["element"]["elem"] for c in commands if "element" in c.get("add", {})]
    assert elements == [  # one command with every element
        [
            ["kv1-0", {"jump": {"target": "port-kv1-0"}}],
            ["kv2-0", {"jump": {"target": "port-kv2-0"}}],
        ]
    ]
    assert not any("flush" in c for c in commands)  # a fresh table has nothing to flush
    assert ps.render_all([]) == ps.removal()


def test_render_changes_touches_only_the_named_nics() -> None:
    changed = ps.port_rules("kv1-0", MAC, ["10.0.0.5"])
    commands = ps.render_changes([changed], ["kv9-0"])
    chains = {
        body["chain"]["name"]
        for c in commands
        for body in c.values()
        if isinstance(body, dict) and "chain" in body and isinstance(body["chain"], dict)
    }
    rules = {c["add"]["rule"]["chain"] for c in commands if "rule" in c.get("add", {})}
    assert chains == {"port-kv1-0", "port-kv9-0"} and rules == {"port-kv1-0"}
    # the removed NIC's element goes before its chain (an element jumping to it pins it)
    assert commands[0] == {"delete": {"element": {**ps._ref(), "name": "ports", "elem": ["kv9-0"]}}}
    assert commands[1] == {"delete": {"chain": {**ps._ref(), "name": "port-kv9-0"}}}
    assert {"flush": {"chain": {**ps._ref(), "name": "port-kv1-0"}}} in commands
    assert not any("table" in next(iter(c.values())) for c in commands)


def test_a_table_read_back_is_compared_without_handles_and_counts() -> None:
    port = ps.port_rules("kv1-0", MAC, ["10.0.0.5", "10.0.0.9"])
    rules = ps.chain_body(port)
    listed = [
        {"chain": {"family": "bridge", "table": "kvmnetd", "name": "prerouting", "handle": 1}},
        {"map": {"name": "ports", "elem": [["kv1-0", {"jump": {"target": "port-kv1-0"}}]]}},
        {"chain": {"family": "bridge", "table": "kvmnetd", "name": "port-kv1-0", "handle": 2}},
        {
            "rule": {
                "chain": "prerouting",
                "handle": 3,
                "expr": ps.render_base()[-1]["add"]["rule"]["expr"],
            }
        },
    ]
    for number, rule in enumerate(rules):
        expr = [
            {"counter": {"packets": number, "bytes": 100 * number}} if "counter" in e else e
            for e in rule["expr"]
        ]
        listed.append(
            {"rule": {"chain": "port-kv1-0", "handle": 10 + number, **rule, "expr": expr}}
        )
    live = ps.read_table(listed)
    assert ps.chain_matches(live, port) and ps.in_place(live, port)
    assert not ps.chain_matches(live, ps.port_rules("kv1-0", MAC, ["10.0.0.5"]))
    dropped = ps.dropped(live, "kv1-0")
    arp_drops = [
        n for n, r in enumerate(rules) if r["comment"] == "arp" and "drop" in r["expr"][-1]
    ]
    assert len(arp_drops) == 2  # another sender MAC; another sender IP
    assert dropped["mac"] == [0, 0] and dropped["arp"] == [sum(arp_drops), 100 * sum(arp_drops)]
    assert dropped["other"] == [len(rules) - 1, 100 * (len(rules) - 1)]
    assert set(dropped) == set(ps.DROP_REASONS)
    assert live.taps() == {"kv1-0"}
