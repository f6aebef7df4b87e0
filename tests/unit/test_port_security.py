"""The anti-spoofing planner (app.domain.port_security): pure, plain data in and out."""

from __future__ import annotations

import pytest

from app.domain import port_security as ps

MAC = "52:54:00:12:34:56"


def _rule(port: ps.PortRules, comment: str, index: int = 0) -> dict[str, object]:
    return [r for r in ps.chain_body(port) if r["comment"] == comment][index]


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
    comments = [r["comment"] for r in ps.chain_body(port)]
    assert comments == [
        "mac",
        "dhcp-server",
        "router-advert",
        "arp",
        "arp",
        "arp",
        "dhcp-client",
        "ipv4",
        "ipv4",
        "ipv6",
        "ipv6",
        "other",
    ]
    assert ps.chain_body(port)[0]["expr"] == [
        {
            "match": {
                "op": "!=",
                "left": {"payload": {"protocol": "ether", "field": "saddr"}},
                "right": MAC,
            }
        },
        {"counter": None},
        {"drop": None},
    ]
    arp_ip = _rule(port, "arp", 1)["expr"][0]["match"]  # type: ignore[index]
    assert arp_ip["op"] == "!="
    assert arp_ip["right"] == {"set": ["0.0.0.0", "10.0.0.5", "10.0.0.9"]}
    ipv4 = _rule(port, "ipv4", 0)["expr"]
    assert ipv4 == [
        {
            "match": {
                "op": "==",
                "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                "right": {"set": ["10.0.0.5", "10.0.0.9"]},
            }
        },
        {"accept": None},
    ]
    assert "drop" in _rule(port, "ipv4", 1)["expr"][-1]  # type: ignore[operator,index]
    ipv6 = _rule(port, "ipv6", 0)["expr"][0]["match"]["right"]  # type: ignore[index]
    assert ipv6 == {"set": ["::", "fe80::5054:ff:fe12:3456"]}
    dhcp_server = _rule(port, "dhcp-server")["expr"][0]["match"]["right"]  # type: ignore[index]
    assert dhcp_server == {"set": [67, 547]}
    ra = _rule(port, "router-advert")["expr"][0]["match"]["right"]  # type: ignore[index]
    assert ra == "nd-router-advert"


def test_a_nic_without_an_address_sends_only_dhcp_requests_over_ipv4() -> None:
    port = ps.port_rules("kv1-0", MAC, [None])
    ipv4 = [r for r in ps.chain_body(port) if r["comment"] == "ipv4"]
    assert len(ipv4) == 1 and ipv4[0]["expr"][-1] == {"drop": None}  # no accept rule
    arp_ip = _rule(port, "arp", 1)["expr"][0]["match"]  # type: ignore[index]
    assert arp_ip["right"] == "0.0.0.0"  # probes only (RFC 5227)
    dhcp = _rule(port, "dhcp-client")["expr"]
    assert [m["match"]["right"] for m in dhcp[:3]] == ["0.0.0.0", 68, 67]  # type: ignore[index]


def test_prefixes_are_nft_prefix_objects() -> None:
    port = ps.port_rules("kv1-0", MAC, [], ["192.0.2.0/24"])
    right = _rule(port, "ipv4", 0)["expr"][0]["match"]["right"]  # type: ignore[index]
    assert right == {"prefix": {"addr": "192.0.2.0", "len": 24}}


def test_render_all_replaces_the_table_with_a_vmap_to_one_chain_per_nic() -> None:
    ports = [ps.port_rules("kv2-0", "52:54:00:00:00:02", []), ps.port_rules("kv1-0", MAC, [])]
    commands = ps.render_all(ports)
    assert commands[:2] == ps.removal()
    assert {"add": {"table": {"family": "bridge", "name": "kvmnetd"}}} in commands
    base = [c["add"]["chain"] for c in commands if "chain" in c.get("add", {})]
    assert base[0]["hook"] == "prerouting" and base[0]["prio"] == -200
    elements = [c["add"]["element"]["elem"] for c in commands if "element" in c.get("add", {})]
    assert elements == [
        [["kv1-0", {"jump": {"target": "port-kv1-0"}}]],
        [["kv2-0", {"jump": {"target": "port-kv2-0"}}]],
    ]
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


def test_a_table_read_back_is_compared_whatever_order_nft_lists_a_set_in() -> None:
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
    arp_ip = listed[4 + 4]["rule"]["expr"][0]["match"]
    arp_ip["right"] = {"set": list(reversed(arp_ip["right"]["set"]))}
    live = ps.read_table(listed)
    assert ps.chain_matches(live, port) and ps.in_place(live, port)
    assert not ps.chain_matches(live, ps.port_rules("kv1-0", MAC, ["10.0.0.5"]))
    dropped = ps.dropped(live, "kv1-0")
    assert dropped["mac"] == [0, 0] and dropped["arp"] == [3 + 4, 700]
    assert dropped["other"] == [len(rules) - 1, 100 * (len(rules) - 1)]
    assert live.taps() == {"kv1-0"}
