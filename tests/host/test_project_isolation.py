"""The project isolation rules of `inet kvmnetd` (app.domain.nat_rules) loaded into the kernel
of a throwaway namespace by app.host.nft and read back with `nft -j list table`: two projects,
two networks each; a reload replaces them atomically; one project left, they go."""

from __future__ import annotations

import json
from typing import Any

from app.domain.nat_rules import NatNetwork, canonical, network_chain, project_set, render
from app.host import nft
from app.host.netns import call_in
from tests.netns_tools import in_netns

A, B = "aaaaaaaa-0000-4000-8000-000000000001", "bbbbbbbb-0000-4000-8000-000000000002"
NETWORKS = [
    NatNetwork("11111111-0000-4000-8000-000000000001", "10.71.1.0/24", True, project_id=A),
    NatNetwork("22222222-0000-4000-8000-000000000002", "10.71.2.0/24", False, project_id=A),
    NatNetwork("33333333-0000-4000-8000-000000000003", "10.71.3.0/24", True, project_id=B),
    NatNetwork("44444444-0000-4000-8000-000000000004", "10.71.4.0/28", True, project_id=B),
]


def listing(ns: str) -> list[dict[str, Any]]:
    result = in_netns(ns, "nft", "-j", "list", "table", "inet", "kvmnetd")
    return json.loads(result.stdout)["nftables"]  # type: ignore[no-any-return]


def of_kind(items: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {i[kind]["name"]: i[kind] for i in items if kind in i}


def elements(found: dict[str, Any]) -> list[str]:
    return [f"{e['prefix']['addr']}/{e['prefix']['len']}" for e in found.get("elem", [])]


def chain_rules(items: list[dict[str, Any]], chain: str) -> list[str]:
    return [i["rule"]["comment"] for i in items if "rule" in i and i["rule"]["chain"] == chain]


def test_two_projects_rules_load_and_read_back(netns: str) -> None:
    call_in(netns, lambda: nft.load(render(NETWORKS, [])))
    items = listing(netns)
    sets = of_kind(items, "set")
    assert {name: elements(s) for name, s in sets.items()} == {
        "managed": ["10.71.1.0/24", "10.71.2.0/24", "10.71.3.0/24", "10.71.4.0/28"],
        project_set(A): ["10.71.1.0/24", "10.71.2.0/24"],
        project_set(B): ["10.71.3.0/24", "10.71.4.0/28"],
    }
    source_map = of_kind(items, "map")["networks"]
    assert (source_map["type"], source_map["map"]) == ("ipv4_addr", "verdict")
    assert [(e[0]["prefix"]["addr"], e[1]["jump"]["target"]) for e in source_map["elem"]] == [
        (n.subnet.split("/")[0], network_chain(n.id)) for n in NETWORKS
    ]
    chains = of_kind(items, "chain")
    assert (chains["forward"]["type"], chains["forward"]["hook"]) == ("filter", "forward")
    assert (chains["input"]["type"], chains["input"]["hook"]) == ("filter", "input")
    assert chain_rules(items, "forward") == ["published forwards", "projects"]
    assert chain_rules(items, "input") == ["projects"]
    for network in NETWORKS:
        chain = network_chain(network.id)
        assert chain_rules(items, chain) == [f"same project {network.id}", f"isolate {network.id}"]
        drop = next(
            i["rule"]
            for i in items
            if i.get("rule", {}).get("comment", "").startswith(f"isolate {network.id}")
        )
        assert {"counter": {"packets": 0, "bytes": 0}} in drop["expr"]
        returns = next(
            i["rule"]
            for i in items
            if i.get("rule", {}).get("comment") == (f"same project {network.id}")
        )
        assert returns["expr"][0]["match"]["right"] == f"@{project_set(network.project_id)}"

    # loading the same rendering again replaces the table: the same rules, none twice
    call_in(netns, lambda: nft.load(render(NETWORKS, [])))
    assert canonical(listing(netns)) == canonical(items)

    # one project left: no filter chains, sets or map remain (one transaction)
    one = [NatNetwork(n.id, n.subnet, n.nat, project_id=A) for n in NETWORKS]
    call_in(netns, lambda: nft.load(render(one, [])))
    after = listing(netns)
    assert not of_kind(after, "set") and not of_kind(after, "map")
    assert set(of_kind(after, "chain")) == {"prerouting", "output", "postrouting"}
