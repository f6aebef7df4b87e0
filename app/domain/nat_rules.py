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

Projects are isolated from each other through the host (issue 11): the host routes between
the gateways of all managed networks, so without a filter a guest of project A on one
network reaches a guest of project B on another. With networks of two or more projects the
table also holds
- set `managed` (every managed subnet) and one set `project_<id>` per project (its subnets);
- verdict map `networks`: a source subnet -> `jump from_<network id>`, so a packet costs one
  map lookup however many networks and projects there are (no rule per pair);
- per network, regular chain `from_<network id>`: `ip daddr @project_<its project> return`
  (its project's networks still route to each other), then `ip daddr @managed counter drop`
  (another project's network: its guests, its broadcast, its gateway);
- filter base chains `forward` (`ct status dnat accept` first: a port forward is published on
  purpose, so a guest of another project may use it through any host address; prerouting's
  dnat already put the target guest's address in daddr, and replies carry the same conntrack
  status; then `ip saddr vmap @networks`) and `input` (`ip saddr vmap @networks`: a guest
  reaches the gateways (DHCP, DNS) of its own project's networks on the host, never another
  project's; host addresses outside the managed subnets are not judged here). Its own
  project's other gateways are allowed rather than only its own network's: the host routes
  to those networks' guests anyway, so they reveal nothing more, and one rule (the project's
  set) serves both hooks.
Replies need no rule of their own: a reply is forwarded too, and is dropped by the same
rules. Traffic to and from the outside (SNAT) never matches: only managed subnets are in
`managed`. With a single project nothing is rendered for it (there is nothing to isolate).
`ct status dnat` holds for any dnat on the host (ours are the port forwards; another table's
dnat, Docker's say, passes too). The interval sets and map need subnets that never overlap:
app.services.networks refuses an overlap with any network of any project.
The drop counter of a network: `nft list chain inet kvmnetd from_<network id>`.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.domain.tenancy import DEFAULT_PROJECT_ID

TABLE = "kvmnetd"
FAMILY = "inet"
DSTNAT = -100
SRCNAT = 100
FILTER = 0
MANAGED = "managed"  # set: every managed subnet
SOURCES = "networks"  # verdict map: a managed subnet -> jump to its network's chain
NOT_FORWARDED = ("224.0.0.0/4", "255.255.255.255/32")  # multicast and broadcast stay local

Json = dict[str, Any]


@dataclass(frozen=True)
class NatNetwork:
    id: str
    subnet: str  # CIDR
    nat: bool
    out_interface: str | None = None
    snat_address: str | None = None
    project_id: str = DEFAULT_PROJECT_ID


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


def _chain(name: str, hook: str, priority: int, kind: str = "nat") -> Json:
    return {
        "chain": {
            **_table_ref(),
            "name": name,
            "type": kind,
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


def _ident(value: str) -> str:
    """An id as part of an nft name (ids are UUIDs: their dashes become underscores)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", value)


def project_set(project_id: str) -> str:
    return f"project_{_ident(project_id)}"


def network_chain(network_id: str) -> str:
    """The chain that judges what a network's guests send to other managed networks (its
    rule `isolate <network id>` counts the drops)."""
    return f"from_{_ident(network_id)}"


def isolated(networks: Sequence[NatNetwork]) -> bool:
    """Whether the networks span two or more projects (else there is nothing to isolate)."""
    return len({n.project_id for n in networks}) > 1


def _subnet_set(name: str, subnets: Sequence[str]) -> Json:
    body = {**_table_ref(), "name": name, "type": "ipv4_addr", "flags": ["interval"]}
    return {"add": {"set": {**body, "elem": [_prefix(s) for s in subnets]}}}


def _isolation(ordered: Sequence[NatNetwork]) -> list[Json]:
    """Sets, map, chains and rules that keep projects apart (see the module docstring);
    `ordered` is sorted by id."""
    by_project: dict[str, list[str]] = {}
    for network in ordered:
        by_project.setdefault(network.project_id, []).append(network.subnet)
    commands: list[Json] = [
        {"add": _chain("forward", "forward", FILTER, "filter")},
        {"add": _chain("input", "input", FILTER, "filter")},
    ]
    commands += [{"add": {"chain": {**_table_ref(), "name": network_chain(n.id)}}} for n in ordered]
    commands.append(_subnet_set(MANAGED, [n.subnet for n in ordered]))
    for project, subnets in sorted(by_project.items()):
        commands.append(_subnet_set(project_set(project), subnets))
    jumps = [[_prefix(n.subnet), {"jump": {"target": network_chain(n.id)}}] for n in ordered]
    source_map = {**_table_ref(), "name": SOURCES, "type": "ipv4_addr", "map": "verdict"}
    commands.append({"add": {"map": {**source_map, "flags": ["interval"], "elem": jumps}}})
    for network in ordered:
        chain = network_chain(network.id)
        same = _match(_ip("daddr"), f"@{project_set(network.project_id)}")
        commands.append(_rule(chain, f"same project {network.id}", [same, {"return": None}]))
        other = [_match(_ip("daddr"), f"@{MANAGED}"), {"counter": None}, {"drop": None}]
        commands.append(_rule(chain, f"isolate {network.id}", other))
    published = _match({"ct": {"key": "status"}}, "dnat", "in")
    commands.append(_rule("forward", "published forwards", [published, {"accept": None}]))
    by_source = {"vmap": {"key": _ip("saddr"), "data": f"@{SOURCES}"}}
    commands.append(_rule("forward", "projects", [by_source]))
    commands.append(_rule("input", "projects", [by_source]))
    return commands


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
    if isolated(ordered):
        commands.extend(_isolation(ordered))
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
    if isolated(networks):
        comments["published forwards"] += 1
        comments["projects"] += 2  # forward and input
        for network in networks:
            comments[f"same project {network.id}"] += 1
            comments[f"isolate {network.id}"] += 1
    return comments


def drop_counter(listing: Sequence[Json], network_id: str) -> tuple[int, int] | None:
    """(packets, bytes) of the network's `isolate` rule in a listing of its chain (`nft -j
    list chain`); None when the listing holds no such rule."""
    for item in listing:
        rule = item.get("rule")
        if not isinstance(rule, dict) or rule.get("comment") != f"isolate {network_id}":
            continue
        for expression in rule.get("expr", []):
            counter = expression.get("counter") if isinstance(expression, dict) else None
            if isinstance(counter, dict):
                return int(counter.get("packets", 0)), int(counter.get("bytes", 0))
    return None


def live_comments(listing: Sequence[Json]) -> Counter[str]:
    return Counter(str(item["rule"].get("comment")) for item in listing if "rule" in item)


def removal() -> list[Json]:
    """Commands that remove our table if it exists (and do nothing otherwise)."""
    return [{"add": {"table": _table()}}, {"delete": {"table": _table()}}]


def canonical(listing: Sequence[Json]) -> list[Json]:
    """`nft -j list table` output without what changes on every load or packet (handles,
    metainfo, counter values), to compare the live table with the one we loaded last."""
    result = []
    for item in listing:
        if "metainfo" in item:
            continue
        ((kind, body),) = item.items()
        kept = {k: v for k, v in body.items() if k != "handle"}
        if kind == "rule" and isinstance(kept.get("expr"), list):
            kept["expr"] = [_uncounted(e) for e in kept["expr"]]
        result.append({kind: kept})
    return result


def _uncounted(expression: Any) -> Any:
    """A rule's counter without its values: counting packets is no drift."""
    if isinstance(expression, dict) and "counter" in expression:
        return {"counter": None}
    return expression
