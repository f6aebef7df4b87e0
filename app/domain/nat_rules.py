"""Our one nftables table, rendered as nft JSON commands from the managed networks and port
forwards (pure: app.host.nft loads the result in one atomic transaction).

The table `inet kvmnetd` holds three NAT base chains:
- prerouting (dstnat): port forwards for traffic arriving from outside or from guests;
- output (dstnat): the same forwards for clients on the host itself;
- postrouting (srcnat): hairpin masquerade (a guest reaching a forward to a guest on the same
  network must see replies come back through the host), then each network's masquerade or
  fixed SNAT of its subnet towards everything outside it.
Rendering is deterministic, so the supervisor can compare what it would load with what it
loaded last, and loading replaces the whole table (delete and re-add in one transaction).
Established connections keep their NAT bindings in conntrack across such a reload.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

TABLE = "kvmnetd"
FAMILY = "inet"
DSTNAT = -100
SRCNAT = 100
NOT_FORWARDED = ("224.0.0.0/4", "255.255.255.255/32")  # multicast and broadcast stay local

Json = dict[str, Any]


@dataclass(frozen=True)
class NatNetwork:
    id: str
    subnet: str  # CIDR
    nat: bool
    out_interface: str | None = None
    snat_address: str | None = None


@dataclass(frozen=True)
class Forward:
    id: str
    protocol: str  # tcp | udp
    listen_address: str  # 0.0.0.0: every local address
    port: int
    end_port: int
    target_address: str
    target_port: int


def _table() -> Json:
    return {"family": FAMILY, "name": TABLE}


def _chain(name: str, hook: str, priority: int) -> Json:
    return {
        "chain": {
            **_table_ref(),
            "name": name,
            "type": "nat",
            "hook": hook,
            "prio": priority,
            "policy": "accept",
        }
    }


def _table_ref() -> Json:
    return {"family": FAMILY, "table": TABLE}


def _rule(chain: str, comment: str, expr: list[Json]) -> Json:
    return {"add": {"rule": {**_table_ref(), "chain": chain, "comment": comment, "expr": expr}}}


def _match(left: Json, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def _ip(field: str) -> Json:
    return {"payload": {"protocol": "ip", "field": field}}


def _prefix(cidr: str) -> Json:
    address, length = cidr.split("/")
    return {"prefix": {"addr": address, "len": int(length)}}


@functools.lru_cache(maxsize=1 << 15)
def _forward_rule(chain: str, forward: Forward) -> Json:
    """Memoized (forwards are immutable values): rendering thousands of forwards again after
    one changed costs lookups, not rebuilding. Callers only serialize the result."""
    expr: list[Json] = []
    if forward.listen_address == "0.0.0.0":
        expr.append(_match({"fib": {"result": "type", "flags": ["daddr"]}}, "local"))
        if chain == "output":  # 127.0.0.1 must not be sent to a guest (a martian source)
            expr.append(_match(_ip("daddr"), _prefix("127.0.0.0/8"), "!="))
    else:
        expr.append(_match(_ip("daddr"), forward.listen_address))
    ports: Any = (
        forward.port
        if forward.port == forward.end_port
        else {"range": [forward.port, forward.end_port]}
    )
    expr.append(_match({"payload": {"protocol": forward.protocol, "field": "dport"}}, ports))
    dnat: Json = {"family": "ip", "addr": forward.target_address}
    if forward.port == forward.end_port:
        dnat["port"] = forward.target_port
    expr.append({"dnat": dnat})
    return _rule(chain, f"forward {forward.id}", expr)


def _hairpin_rule(network: NatNetwork) -> Json:
    return _rule(
        "postrouting",
        f"hairpin {network.id}",
        [
            _match({"ct": {"key": "status"}}, "dnat", "in"),
            _match(_ip("saddr"), _prefix(network.subnet)),
            _match(_ip("daddr"), _prefix(network.subnet)),
            {"masquerade": None},
        ],
    )


def _snat_rule(network: NatNetwork) -> Json:
    outside = {"set": [_prefix(network.subnet), *(_prefix(c) for c in NOT_FORWARDED)]}
    expr = [_match(_ip("saddr"), _prefix(network.subnet)), _match(_ip("daddr"), outside, "!=")]
    if network.out_interface:
        expr.append(_match({"meta": {"key": "oifname"}}, network.out_interface))
    if network.snat_address:
        expr.append({"snat": {"family": "ip", "addr": network.snat_address}})
    else:
        expr.append({"masquerade": None})
    return _rule("postrouting", f"nat {network.id}", expr)


def render(networks: Sequence[NatNetwork], forwards: Sequence[Forward]) -> list[Json]:
    """The nft JSON commands that replace our table with exactly these rules; an empty list
    when there is nothing to hold (see `removal`)."""
    if not networks and not forwards:
        return []
    commands: list[Json] = [
        {"add": {"table": _table()}},  # so that the delete never fails on a missing table
        {"delete": {"table": _table()}},
        {"add": {"table": _table()}},
        {"add": _chain("prerouting", "prerouting", DSTNAT)},
        {"add": _chain("output", "output", DSTNAT)},
        {"add": _chain("postrouting", "postrouting", SRCNAT)},
    ]
    for forward in sorted(forwards, key=lambda f: f.id):
        commands.append(_forward_rule("prerouting", forward))
        commands.append(_forward_rule("output", forward))
    ordered = sorted(networks, key=lambda n: n.id)
    commands.extend(_hairpin_rule(n) for n in ordered)
    commands.extend(_snat_rule(n) for n in ordered if n.nat)
    return commands


def rule_comments(networks: Sequence[NatNetwork], forwards: Sequence[Forward]) -> Counter[str]:
    """The comment of every rule `render` makes: a cheap check of a table read back."""
    comments: Counter[str] = Counter()
    for forward in forwards:
        comments[f"forward {forward.id}"] += 2  # prerouting and output
    for network in networks:
        comments[f"hairpin {network.id}"] += 1
        if network.nat:
            comments[f"nat {network.id}"] += 1
    return comments


def live_comments(listing: Sequence[Json]) -> Counter[str]:
    return Counter(str(item["rule"].get("comment")) for item in listing if "rule" in item)


def removal() -> list[Json]:
    """Commands that remove our table if it exists (and do nothing otherwise)."""
    return [{"add": {"table": _table()}}, {"delete": {"table": _table()}}]


def canonical(listing: Sequence[Json]) -> list[Json]:
    """`nft -j list table` output without what changes on every load (handles, metainfo),
    to compare the live table with the one we loaded last."""
    result = []
    for item in listing:
        if "metainfo" in item:
            continue
        ((kind, body),) = item.items()
        result.append({kind: {k: v for k, v in body.items() if k != "handle"}})
    return result
