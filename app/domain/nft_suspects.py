"""Which foreign nftables chains can drop a packet at given hooks: the suspects a failed
path probe names.

Reads the objects of `nft -j list ruleset` (libnftables-json(5)): base chains with their
hook and policy, and rules with their expressions. A chain is a suspect when its policy is
drop, or when it (or a chain it jumps or goes to) has a rule whose verdict is drop or reject.
A rule without any match (`match`, `lookup`, `limit`, ...) before its verdict drops
everything that reaches it, so it ranks first; then drop policies; then conditional rules.
Our own table is never a suspect. Pure: the caller runs nft.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

UNCONDITIONAL, POLICY, CONDITIONAL = 0, 1, 2
_VERDICTS = ("drop", "reject")
# expressions that only count, log or annotate: they do not make a rule conditional
_PASSIVE = frozenset({"counter", "log", "comment", "notrack", "meta_set"})

ChainKey = tuple[str, str, str]  # family, table, chain
Chains = dict[ChainKey, dict[str, Any]]
Rules = dict[ChainKey, list[dict[str, Any]]]


@dataclass(frozen=True)
class Suspect:
    """A base chain at a probed hook that can drop the probe, and why."""

    family: str
    table: str
    chain: str  # the base chain hooked in
    hook: str
    rank: int  # UNCONDITIONAL, POLICY or CONDITIONAL
    why: str  # e.g. "policy drop", "rule handle 4 in chain deny: reject"

    def where(self) -> str:
        return f"{self.family} table {self.table} chain {self.chain} (hook {self.hook})"


def suspects(
    objects: Sequence[Any],
    hooks: Iterable[tuple[str, str]],
    ours: tuple[str, str],
) -> list[Suspect]:
    """Suspects among the base chains hooked at any of `hooks` ((family, hook) pairs), best
    first; `ours` is our table's (family, name)."""
    wanted = set(hooks)
    chains, rules = _index(objects)
    found: list[Suspect] = []
    for key, chain in chains.items():
        family, table, _ = key
        hook = str(chain.get("hook"))
        if (family, hook) not in wanted or (family, table) == ours:
            continue
        if chain.get("policy") == "drop":
            found.append(Suspect(*key, hook, POLICY, "policy drop"))
        found += [Suspect(*key, hook, rank, why) for rank, why in _drops(key, rules, set())]
    return sorted(found, key=lambda s: (s.rank, s.family, s.table, s.chain))


def _key(obj: dict[str, Any], name: str) -> ChainKey:
    return (str(obj.get("family")), str(obj.get("table")), str(obj.get(name)))


def _index(objects: Sequence[Any]) -> tuple[Chains, Rules]:
    chains: Chains = {}
    rules: Rules = {}
    for obj in objects:
        if not isinstance(obj, dict):
            continue
        if isinstance(chain := obj.get("chain"), dict):
            chains[_key(chain, "name")] = chain
        elif isinstance(rule := obj.get("rule"), dict):
            rules.setdefault(_key(rule, "chain"), []).append(rule)
    return chains, rules


def _drops(key: ChainKey, rules: Rules, seen: set[ChainKey]) -> list[tuple[int, str]]:
    """(rank, why) of every drop or reject reachable from chain `key` (jumps followed once)."""
    seen.add(key)
    found: list[tuple[int, str]] = []
    for rule in rules.get(key, []):
        expressions = [e for e in rule.get("expr") or [] if isinstance(e, dict)]
        conditional = any(not (set(e) <= _PASSIVE) for e in expressions[:-1])
        last = expressions[-1] if expressions else {}
        verdict = next((v for v in _VERDICTS if v in last), None)
        if verdict is not None:
            rank = CONDITIONAL if conditional else UNCONDITIONAL
            found.append((rank, f"rule handle {rule.get('handle')} in chain {key[2]}: {verdict}"))
        for jump in ("jump", "goto"):
            branch = last.get(jump)
            target = branch.get("target") if isinstance(branch, dict) else None
            if isinstance(target, str) and (key[0], key[1], target) not in seen:
                sub = _drops((key[0], key[1], target), rules, seen)
                # what a conditional jump leads to only drops under that condition
                found += [(max(r, CONDITIONAL if conditional else r), w) for r, w in sub]
    return found
