"""The rules that keep projects' managed networks apart through the host (app.domain.nat_rules),
rendered from plain data: per-project sets, a verdict map from each source subnet to its
network's chain, the `published forwards` exemption, and nothing at all for a single project."""

from __future__ import annotations

from collections import Counter
from typing import Any

from app.domain.nat_rules import (
    Forward,
    NatNetwork,
    canonical,
    drop_counter,
    network_chain,
    project_set,
    render,
    rule_comments,
)
from app.domain.tenancy import DEFAULT_PROJECT_ID

A, B = "aaaaaaaa-0000-4000-8000-000000000001", "bbbbbbbb-0000-4000-8000-000000000002"
NETWORKS = [
    NatNetwork("n3", "10.0.3.0/24", False, project_id=B),
    NatNetwork("n1", "10.0.1.0/24", True, project_id=A),
    NatNetwork("n2", "10.0.2.0/24", True, "eth0", "192.0.2.9", project_id=A),
]
FORWARDS = [Forward("f1", "tcp", "0.0.0.0", 8080, 8080, "10.0.3.5", 80)]


def added(commands: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {c["add"][kind]["name"]: c["add"][kind] for c in commands if kind in c.get("add", {})}


def rules(commands: list[dict[str, Any]]) -> list[tuple[str, str, list[Any]]]:
    found = [c["add"]["rule"] for c in commands if "rule" in c.get("add", {})]
    return [(r["chain"], r["comment"], r["expr"]) for r in found]


def prefix(cidr: str) -> dict[str, Any]:
    address, length = cidr.split("/")
    return {"prefix": {"addr": address, "len": int(length)}}


def test_one_project_renders_no_filter_at_all() -> None:
    """A host of one project (the default, or any single one) keeps today's NAT-only table."""
    for project in (DEFAULT_PROJECT_ID, A):
        same = [NatNetwork(n.id, n.subnet, n.nat, project_id=project) for n in NETWORKS]
        commands = render(same, FORWARDS)
        assert set(added(commands, "chain")) == {"prerouting", "output", "postrouting"}
        assert not added(commands, "set") and not added(commands, "map")
        assert all(not c.startswith(("isolate", "same project")) for c in rule_comments(same, []))


def test_two_projects_get_sets_a_verdict_map_and_a_chain_per_network() -> None:
    commands = render(NETWORKS, FORWARDS)
    assert commands == render(list(reversed(NETWORKS)), FORWARDS)  # deterministic
    sets = added(commands, "set")
    assert {name: s["elem"] for name, s in sets.items()} == {
        "managed": [prefix("10.0.1.0/24"), prefix("10.0.2.0/24"), prefix("10.0.3.0/24")],
        project_set(A): [prefix("10.0.1.0/24"), prefix("10.0.2.0/24")],
        project_set(B): [prefix("10.0.3.0/24")],
    }
    assert project_set(A) == "project_aaaaaaaa_0000_4000_8000_000000000001"
    assert all(s["type"] == "ipv4_addr" and s["flags"] == ["interval"] for s in sets.values())
    (source_map,) = added(commands, "map").values()
    assert (source_map["name"], source_map["map"]) == ("networks", "verdict")
    assert source_map["elem"] == [
        [prefix(f"10.0.{i}.0/24"), {"jump": {"target": network_chain(f"n{i}")}}] for i in (1, 2, 3)
    ]
    chains = added(commands, "chain")
    assert {k: (v.get("type"), v.get("hook"), v.get("prio")) for k, v in chains.items()} == {
        "prerouting": ("nat", "prerouting", -100),
        "output": ("nat", "output", -100),
        "postrouting": ("nat", "postrouting", 100),
        "forward": ("filter", "forward", 0),
        "input": ("filter", "input", 0),
        "from_n1": (None, None, None),  # regular chains: reached only through the map
        "from_n2": (None, None, None),
        "from_n3": (None, None, None),
    }
    # sets, map and chains exist before the rules and map elements that name them
    kinds = [next(iter(c["add"])) if "add" in c else "delete" for c in commands]
    declared = max(i for i, k in enumerate(kinds) if k in ("set", "map", "chain"))
    assert kinds[declared + 1 :] == ["rule"] * (len(kinds) - declared - 1)


def test_each_network_returns_for_its_own_project_and_drops_the_others_counted() -> None:
    nat_chains = ("prerouting", "output", "postrouting")
    filtering = [r for r in rules(render(NETWORKS, FORWARDS)) if r[0] not in nat_chains]
    daddr = {"payload": {"protocol": "ip", "field": "daddr"}}
    saddr = {"payload": {"protocol": "ip", "field": "saddr"}}

    def is_in(name: str) -> dict[str, Any]:
        return {"match": {"op": "==", "left": daddr, "right": f"@{name}"}}

    drop = [is_in("managed"), {"counter": None}, {"drop": None}]
    ct_dnat = {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}}
    vmap = {"vmap": {"key": saddr, "data": "@networks"}}
    assert filtering == [
        ("from_n1", "same project n1", [is_in(project_set(A)), {"return": None}]),
        ("from_n1", "isolate n1", drop),
        ("from_n2", "same project n2", [is_in(project_set(A)), {"return": None}]),
        ("from_n2", "isolate n2", drop),
        ("from_n3", "same project n3", [is_in(project_set(B)), {"return": None}]),
        ("from_n3", "isolate n3", drop),
        # a published port forward (dnat in prerouting) passes before any project judges it
        ("forward", "published forwards", [ct_dnat, {"accept": None}]),
        ("forward", "projects", [vmap]),
        ("input", "projects", [vmap]),  # another project's gateway is in @managed too
    ]


def test_rule_comments_name_every_rendered_rule() -> None:
    for networks in (NETWORKS, NETWORKS[1:], NETWORKS[:1]):
        rendered = Counter(comment for _, comment, _ in rules(render(networks, FORWARDS)))
        assert rendered == rule_comments(networks, FORWARDS)


def test_a_project_or_subnet_change_changes_the_rendering() -> None:
    moved = [NatNetwork("n3", "10.0.3.0/24", False, project_id=A), *NETWORKS[1:]]
    assert render(moved, FORWARDS) != render(NETWORKS, FORWARDS)
    assert not added(render(moved, FORWARDS), "map")  # all in A now: nothing to isolate


def test_counter_values_are_no_drift() -> None:
    """The live table read back twice differs only in what a counter counted: the same."""

    def listing(packets: int) -> list[dict[str, Any]]:
        counter = {"counter": {"packets": packets, "bytes": packets * 84}}
        return [
            {"metainfo": {"json_schema_version": 1}},
            {"rule": {"chain": "from_n1", "handle": 7, "expr": [counter, {"drop": None}]}},
        ]

    assert canonical(listing(0)) == canonical(listing(5))
    assert canonical(listing(0)) == [
        {"rule": {"chain": "from_n1", "expr": [{"counter": None}, {"drop": None}]}}
    ]


def test_the_drop_counter_is_read_from_the_networks_isolate_rule() -> None:
    counter = {"counter": {"packets": 3, "bytes": 252}}
    listing = [
        {"metainfo": {"json_schema_version": 1}},
        {"chain": {"name": "from_n1"}},
        {"rule": {"comment": "same project n1", "expr": [{"return": None}]}},
        {"rule": {"comment": "isolate n1", "expr": [{"match": {}}, counter, {"drop": None}]}},
    ]
    assert drop_counter(listing, "n1") == (3, 252)
    assert drop_counter(listing, "n2") is None
    assert drop_counter([], "n1") is None
