"""Per-NIC anti-spoofing (Neutron's `port_security_enabled`) as nft JSON commands (pure:
app.host.nft loads them, app.supervisor.port_security decides when).

Our table `bridge kvmnetd` (the NAT table is `inet kvmnetd`: tables are per family) sees
every frame a guest sends into a Linux bridge through its tap, forwarded or for the host:
- base chain `prerouting` (filter hook prerouting, priority filter = -200) with one rule,
  `iifname vmap @ports`;
- map `ports` (ifname : verdict): one element per protected tap, `"<tap>" : jump port-<tap>`;
- one regular chain `port-<tap>` per protected NIC, whose rules let through only
  * frames from the NIC's own MAC;
  * ARP whose sender MAC is that MAC and whose sender IP is one of the NIC's IPv4
    addresses or 0.0.0.0 (an RFC 5227 probe);
  * IPv4 from the NIC's addresses, or from 0.0.0.0 as a DHCP client (UDP 68 -> 67,
    RFC 2131 section 4.1: a client without an address sends from 0.0.0.0);
  * IPv6 from its EUI-64 link-local address (RFC 4291 appendix A), its allowed IPv6
    prefixes, or :: (duplicate address detection, RFC 4862 section 5.4);
  and drop, each with its own counter: DHCP server replies (UDP source port 67 or 547),
  IPv6 router advertisements (ICMPv6 type 134, RFC 4861), and every other frame. A
  NIC whose IPv4 address is not known yet sends only DHCP requests over IPv4.
  Lists of values are one rule per value, never an anonymous set (see chain_body).
A frame from a tap that is not in the map is not touched. One NIC's change replaces its
chain's rules and its map element only (its own counters restart; no other chain is
touched); `render_all` replaces the whole table (at start-up, or when it was flushed).
"""

from __future__ import annotations

import functools
import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

FAMILY = "bridge"
TABLE = "kvmnetd"
BASE_CHAIN = "prerouting"
PORTS_MAP = "ports"
PRIORITY = -200  # NF_BR_PRI_FILTER_BRIDGED: `priority filter` in the bridge family
CHAIN_PREFIX = "port-"
DHCP_SERVER_PORTS = (67, 547)  # DHCPv4 server (RFC 2131), DHCPv6 server (RFC 8415)
ND_ROUTER_ADVERT = "nd-router-advert"  # ICMPv6 type 134 (RFC 4861 section 4.2)
ANY_V4 = "0.0.0.0"
ANY_V6 = "::"

# the comments of the rules that drop: what each drop counter counts (API `dropped_by`)
DROP_REASONS = ("mac", "dhcp-server", "router-advert", "arp", "ipv4", "ipv6", "other")

Json = dict[str, Any]


@dataclass(frozen=True)
class PortRules:
    """What one protected NIC may send from: its tap, MAC and addresses (IPv4 addresses or
    prefixes, IPv6 prefixes besides its link-local one), sorted."""

    tap: str
    mac: str
    ipv4: tuple[str, ...] = ()
    ipv6: tuple[str, ...] = ()

    @property
    def chain(self) -> str:
        return chain_name(self.tap)


def chain_name(tap: str) -> str:
    return CHAIN_PREFIX + tap


def link_local(mac: str) -> str:
    """The EUI-64 IPv6 link-local address of a MAC (RFC 4291 appendix A: invert the
    universal/local bit, put ff:fe in the middle; RFC 4862 section 5.3: fe80::/64)."""
    octets = [int(part, 16) for part in mac.split(":")]
    if len(octets) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    octets[0] ^= 0x02
    eui64 = bytes([*octets[:3], 0xFF, 0xFE, *octets[3:]])
    return str(ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + eui64))


def port_rules(
    tap: str, mac: str, addresses: Iterable[str | None], allowed: Iterable[str] = ()
) -> PortRules:
    """A NIC's PortRules from its fixed and observed IPv4 addresses (None: unknown) and its
    allowed address pairs (IPv4 or IPv6 CIDRs; a host address may omit its length)."""
    v4: set[ipaddress.IPv4Network] = set()
    v6: set[ipaddress.IPv6Network] = set()
    for text in [*(a for a in addresses if a), *allowed]:
        network = ipaddress.ip_network(text, strict=False)
        if isinstance(network, ipaddress.IPv4Network):
            v4.add(network)
        else:
            v6.add(network)
    return PortRules(
        tap=tap,
        mac=mac.lower(),
        ipv4=tuple(_shown(n) for n in sorted(v4)),
        ipv6=tuple(_shown(n) for n in sorted(v6)),
    )


def _shown(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return str(network)


# ---- nft JSON building blocks --------------------------------------------------------------


def _table() -> Json:
    return {"family": FAMILY, "name": TABLE}


def _ref() -> Json:
    return {"family": FAMILY, "table": TABLE}


def _match(left: Json, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


@functools.cache
def _field(protocol: str, field: str) -> Json:
    """A payload expression (shared: callers never change it)."""
    return {"payload": {"protocol": protocol, "field": field}}


def _address(text: str) -> Any:
    if "/" not in text:
        return text
    address, length = text.split("/")
    return {"prefix": {"addr": address, "len": int(length)}}


def _drop(reason: str, *matches: Json) -> Json:
    return {"comment": reason, "expr": [*matches, {"counter": None}, {"drop": None}]}


def _accept(comment: str, *matches: Json) -> Json:
    return {"comment": comment, "expr": [*matches, {"accept": None}]}


@functools.lru_cache(maxsize=1 << 14)
def chain_body(port: PortRules) -> list[Json]:
    """The rules of a NIC's chain (each {"comment", "expr"}), in order. Lists of values are
    one rule per value rather than an anonymous set: a set is a kernel object of its own,
    and with thousands of them every `nft` command (which reads the table's sets first)
    took seconds (bench/port_security.py). Memoized (PortRules are immutable values): a
    reload or a drift check of thousands of NICs looks them up instead of building them
    again; callers only serialize or compare the result, never change it."""
    ether_type = _field("ether", "type")
    rules = [_drop("mac", _match(_field("ether", "saddr"), port.mac, "!="))]
    rules += [
        _drop("dhcp-server", _match(_field("udp", "sport"), sport)) for sport in DHCP_SERVER_PORTS
    ]
    rules += [
        _drop("router-advert", _match(_field("icmpv6", "type"), ND_ROUTER_ADVERT)),
        _drop("arp", _match(_field("arp", "saddr ether"), port.mac, "!=")),
    ]
    # ARP from one of its addresses (or a probe from 0.0.0.0) goes on; other ARP is dropped
    rules += [
        _accept("arp", _match(_field("arp", "saddr ip"), _address(a))) for a in (ANY_V4, *port.ipv4)
    ]
    rules += [
        _drop("arp", _match(ether_type, "arp")),
        _accept(
            "dhcp-client",
            _match(_field("ip", "saddr"), ANY_V4),
            _match(_field("udp", "sport"), 68),
            _match(_field("udp", "dport"), 67),
        ),
    ]
    rules += [_accept("ipv4", _match(_field("ip", "saddr"), _address(a))) for a in port.ipv4]
    rules.append(_drop("ipv4", _match(ether_type, "ip")))
    v6 = (ANY_V6, link_local(port.mac), *port.ipv6)
    rules += [_accept("ipv6", _match(_field("ip6", "saddr"), _address(a))) for a in v6]
    rules.append(_drop("ipv6", _match(ether_type, "ip6")))
    rules.append(_drop("other"))
    return rules


def _add_rule(chain: str, rule: Json) -> Json:
    return {"add": {"rule": {**_ref(), "chain": chain, **rule}}}


def _element(port: PortRules) -> list[Any]:
    return [port.tap, {"jump": {"target": port.chain}}]


def _elements(ports: Iterable[PortRules]) -> Json:
    return {**_ref(), "name": PORTS_MAP, "elem": [_element(p) for p in ports]}


def _skeleton() -> list[Json]:
    return [
        {"add": {"table": _table()}},
        {
            "add": {
                "chain": {
                    **_ref(),
                    "name": BASE_CHAIN,
                    "type": "filter",
                    "hook": "prerouting",
                    "prio": PRIORITY,
                    "policy": "accept",
                }
            }
        },
        {"add": {"map": {**_ref(), "name": PORTS_MAP, "type": "ifname", "map": "verdict"}}},
    ]


@functools.lru_cache(maxsize=1 << 14)
def _chain_rules(port: PortRules) -> list[Json]:
    """The `add rule` commands of a NIC's chain (memoized like chain_body)."""
    return [_add_rule(port.chain, rule) for rule in chain_body(port)]


def _port_commands(port: PortRules) -> list[Json]:
    """Add the NIC's chain (if missing), replace its rules, then point its map element at it."""
    chain = {**_ref(), "name": port.chain}
    return [
        {"add": {"chain": chain}},
        {"flush": {"chain": chain}},
        *_chain_rules(port),
        {"add": {"element": _elements([port])}},
    ]


def forget_rendered() -> None:
    """Empty the memo of rendered chains (benchmarks measure a cold render)."""
    chain_body.cache_clear()
    _chain_rules.cache_clear()


def render_all(ports: Sequence[PortRules]) -> list[Json]:
    """Commands that replace our bridge table with exactly these NICs' rules (one
    transaction); with no NIC, the table's removal."""
    if not ports:
        return removal()
    ordered = sorted(ports, key=lambda p: p.tap)
    # a fresh table: each chain is added (no flush), and the map gets its elements at once
    commands = [*removal(), *render_base()]
    commands += [{"add": {"chain": {**_ref(), "name": p.chain}}} for p in ordered]
    for port in ordered:
        commands += _chain_rules(port)
    commands.append({"add": {"element": _elements(ordered)}})
    return commands


def render_base() -> list[Json]:
    """The table, its base chain with the one rule that dispatches by tap, and the map (no
    NIC yet): what `render_all` starts from after removing the old table."""
    return [*_skeleton(), _add_rule(BASE_CHAIN, {"expr": [_vmap()]})]


def _vmap() -> Json:
    return {"vmap": {"key": {"meta": {"key": "iifname"}}, "data": "@" + PORTS_MAP}}


def render_changes(changed: Sequence[PortRules], removed: Sequence[str]) -> list[Json]:
    """Commands that touch only these NICs (their chains and map elements) in a table that
    already has its base chain and map: `changed` get their rules replaced (or added),
    the chains of the taps in `removed` go (their map element first: a chain that an
    element jumps to cannot be deleted). Fails (as a whole) where a removed tap's element or
    chain is missing."""
    commands: list[Json] = []
    for tap in sorted(removed):
        chain = {**_ref(), "name": chain_name(tap)}
        element = {**_ref(), "name": PORTS_MAP, "elem": [tap]}
        # deleting what is not there fails the transaction: the caller then loads the
        # whole table (render_all), which also repairs whatever else was changed by hand
        commands += [{"delete": {"element": element}}, {"delete": {"chain": chain}}]
    for port in sorted(changed, key=lambda p: p.tap):
        commands.extend(_port_commands(port))
    return commands


def removal() -> list[Json]:
    """Commands that remove our bridge table if it exists (and do nothing otherwise)."""
    return [{"add": {"table": _table()}}, {"delete": {"table": _table()}}]


# ---- reading the table back ----------------------------------------------------------------


@dataclass(frozen=True)
class LiveTable:
    """Our bridge table as `nft -j list table` shows it: whether the base chain hooks the map,
    the map's elements (tap -> the chain it jumps to), and each port chain's rules without
    handles and counter values (`chains`), plus what each drop rule counted (`counters`:
    chain -> comment -> [packets, bytes])."""

    hooked: bool
    elements: Mapping[str, str | None]
    chains: Mapping[str, list[Json]]
    counters: Mapping[str, dict[str, list[int]]]

    def chain_of(self, tap: str) -> list[Json] | None:
        return self.chains.get(chain_name(tap))

    def comments(self, tap: str) -> list[str] | None:
        rules = self.chain_of(tap)
        return None if rules is None else [str(r.get("comment")) for r in rules]

    def taps(self) -> set[str]:
        """Taps with a chain or a map element of ours."""
        chained = {c.removeprefix(CHAIN_PREFIX) for c in self.chains}
        return chained | set(self.elements)


def read_table(listing: Sequence[Json]) -> LiveTable:
    hooked = False
    elements: dict[str, str | None] = {}
    chains: dict[str, list[Json]] = {}
    counters: dict[str, dict[str, list[int]]] = {}
    for item in listing:
        if "map" in item and item["map"].get("name") == PORTS_MAP:
            for key, verdict in item["map"].get("elem", []):
                jump = verdict.get("jump") if isinstance(verdict, dict) else None
                elements[str(key)] = jump.get("target") if isinstance(jump, dict) else None
        elif "chain" in item and str(item["chain"].get("name", "")).startswith(CHAIN_PREFIX):
            chains.setdefault(item["chain"]["name"], [])
        elif "rule" in item:
            rule = item["rule"]
            chain = str(rule.get("chain"))
            if chain == BASE_CHAIN:
                hooked = hooked or rule.get("expr") == [_vmap()]
            elif chain.startswith(CHAIN_PREFIX):
                chains.setdefault(chain, []).append(_without_counts(rule))
                _count(counters.setdefault(chain, {}), rule)
    return LiveTable(hooked, elements, chains, counters)


def _without_counts(rule: Json) -> Json:
    expr = [{"counter": None} if "counter" in e else e for e in rule.get("expr", [])]
    return {"comment": rule.get("comment"), "expr": expr}


def _count(into: dict[str, list[int]], rule: Json) -> None:
    for expr in rule.get("expr", []):
        counter = expr.get("counter") if isinstance(expr, dict) else None
        if isinstance(counter, dict):
            total = into.setdefault(str(rule.get("comment")), [0, 0])
            total[0] += int(counter.get("packets", 0))
            total[1] += int(counter.get("bytes", 0))


def _canonical(rule: Json) -> str:
    """A rule as comparable text: anonymous sets in a fixed order (nft lists a set's elements
    sorted its own way)."""

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                key: sorted((walk(v) for v in inner), key=json.dumps)
                if key == "set" and isinstance(inner, list)
                else walk(inner)
                for key, inner in value.items()
            }
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return json.dumps(walk(rule), sort_keys=True)


def chain_matches(live: LiveTable, port: PortRules) -> bool:
    """The NIC's chain holds exactly the rules `chain_body` plans (drift: someone edited
    it) and its map element jumps to it."""
    rules = live.chain_of(port.tap)
    if rules is None or live.elements.get(port.tap) != port.chain:
        return False
    planned = chain_body(port)
    if rules == planned:  # nft lists our rules as we wrote them: no canonical text needed
        return True
    return [_canonical(r) for r in rules] == [_canonical(r) for r in planned]


def expected_comments(port: PortRules) -> list[str]:
    return [str(rule["comment"]) for rule in chain_body(port)]


def in_place(live: LiveTable, port: PortRules) -> bool:
    """The NIC's chain holds the rules it should (by their comments) and its map element
    jumps to it."""
    return (
        live.hooked
        and live.elements.get(port.tap) == port.chain
        and live.comments(port.tap) == expected_comments(port)
    )


def dropped(live: LiveTable, tap: str) -> dict[str, list[int]]:
    """What the drop rules of a tap's chain counted: reason -> [packets, bytes]."""
    return dict(live.counters.get(chain_name(tap), {}))
