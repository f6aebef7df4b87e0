"""The pure reconcile planner: desired specs + observed links -> ordered actions.

It compares what the database wants (specs) with what the kernel has (observed links) and
returns the actions that make them equal. It never touches a link that does not carry our
ownership mark, except one that is provably ours: we journaled `create_intent` before the
create call (a crash between create and mark), or it is the very link (same ifindex; the
kernel does not reuse indexes soon) whose mark someone removed by hand.

Order comes from the dependencies the drivers declare (a tap on its master bridge, a VLAN
sub-interface on its parent), sorted with graphlib.TopologicalSorter: removals first,
children before parents (they free names and never leave a port on a link being removed),
then everything else, parents before children. A link that cannot be planned (no driver for
its kind, a dependency cycle, a dependency that is missing or going away) gets a BLOCKED
action with the reason, on itself only.

What a restart does with a bridge_per_vlan VLAN (issue 10 asks for "sub-interface before
the bridge that uses it"; checked, and the graph is right as it is): the VLAN owns two
links, its bridge `<trunk>v<vid>` (no dependency) and the 802.1Q link `<uplink>.<vid>`,
whose driver declares its parent (the uplink NIC, not ours: it must exist, nothing of ours
makes it) and, being a bridge port, its master, the VLAN's bridge. With both gone, the
bridge is created first and then the sub-interface, which is created on its parent and
enslaved in its first configuration call (`ip link set <uplink>.<vid> master <bridge>`
needs the bridge to exist). The sub-interface's parent comes before it, and the bridge it
is a port of comes before it too; "before the bridge that uses it" holds for removal, where
the sub-interface leaves before its bridge is deleted (children first). Proven by
tests/unit/test_vlan_links.py (both orders) and, after a real restart with both links
deleted, by tests/kernel/nested/test_vlans_daemon.py.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from graphlib import CycleError, TopologicalSorter

from app.domain.links.driver import driver_for_link, find_driver
from app.domain.links.model import (
    Action,
    ActionKind,
    Fingerprint,
    LinkChanges,
    LinkKind,
    LinkSpec,
    ObservedLink,
)


def fingerprint(link: ObservedLink) -> Fingerprint:
    """What the monitor compares a notification against (Fingerprint)."""
    return Fingerprint(
        link.master_index,
        link.mtu,
        link.mac,
        link.up,
        link.oper_state,
        link.parent_index,
        driver_for_link(link).watched(link),
        link.port_isolated,
    )


def _no_driver(spec: LinkSpec) -> Action:
    return Action(
        ActionKind.BLOCKED,
        spec.name,
        spec,
        reason=f"no driver for link kind {str(spec.kind)!r}: the link is left as it is",
    )


def diff_link(
    spec: LinkSpec, link: ObservedLink, masters: dict[int, str], mark: str | None = None
) -> LinkChanges:
    """The changes that bring `link` to `spec` (mutable attributes only)."""
    driver = find_driver(spec.kind)
    if driver is None:
        raise ValueError(f"no driver for link kind {str(spec.kind)!r}")
    return driver.diff(spec, link, masters, mark)


def plan_link(spec: LinkSpec, link: ObservedLink | None, masters: dict[int, str]) -> Action:
    """The one action that brings a single desired link in line with the kernel."""
    if spec.deleted:  # removal needs no driver: a marked link goes by its index
        if link is not None and link.alias == spec.mark:
            return Action(ActionKind.DELETE, spec.name, spec, link)
        return Action(ActionKind.FORGET, spec.name, spec, link)
    driver = find_driver(spec.kind)
    if driver is None:
        return _no_driver(spec)
    if link is None:
        return Action(ActionKind.CREATE, spec.name, spec)
    if link.alias != spec.mark:
        if link.owner is not None:
            return Action(ActionKind.RECREATE, spec.name, spec, link, reason="stale link of ours")
        provably_ours = spec.create_intent or spec.ifindex == link.index
        if provably_ours and driver.immutable_mismatch(spec, link) is None:
            changes = driver.diff(spec, link, masters, mark=spec.mark)
            return Action(ActionKind.ADOPT, spec.name, spec, link, changes)
        return Action(
            ActionKind.CONFLICT,
            spec.name,
            spec,
            link,
            reason=(
                f"a link named {spec.name!r} (kind {link.kind or 'unknown'}, index "
                f"{link.index}) exists and is not managed by kvmnetd; it is left untouched"
            ),
        )
    why = driver.immutable_mismatch(spec, link)
    if why is not None:
        return Action(ActionKind.RECREATE, spec.name, spec, link, reason=why)
    changes = driver.diff(spec, link, masters)
    if changes.empty():
        return Action(ActionKind.SETTLED, spec.name, spec, link)
    return Action(ActionKind.UPDATE, spec.name, spec, link, changes)


def plan(
    specs: Iterable[LinkSpec], observed: Iterable[ObservedLink], keep_ids: Iterable[str] = ()
) -> list[Action]:
    """A full reconcile plan, ordered so that every step can succeed (order_actions).
    Links of `keep_ids` (rows that exist but cannot be read) are no orphans: they are left
    alone, and so is a link that depends on one of them."""
    by_name = {link.name: link for link in observed}
    masters = {link.index: link.name for link in by_name.values()}
    wanted_ids = set(keep_ids)
    actions: list[Action] = []
    for spec in specs:
        wanted_ids.add(spec.id)
        actions.append(plan_link(spec, by_name.get(spec.name), masters))
    claimed = {a.observed.index for a in actions if a.observed is not None}
    keep = set(keep_ids)
    for link in by_name.values():
        owner = link.owner
        if owner is None or link.index in claimed:
            continue
        if owner[1] not in wanted_ids:
            actions.append(Action(ActionKind.SWEEP, link.name, observed=link, reason="orphan"))
        elif owner[0] is LinkKind.VLAN and owner[1] not in keep:
            # a VLAN's sub-interface is named after its parent: one no spec names any more
            # (the uplink went or changed) is a leftover of a resource that still exists
            reason = "stale: its owner no longer wants a link of this name"
            actions.append(Action(ActionKind.SWEEP, link.name, observed=link, reason=reason))
    return order_actions(actions, existing=by_name.keys())


# ---- ordering -------------------------------------------------------------------------------

REMOVALS = frozenset({ActionKind.SWEEP, ActionKind.DELETE})
ACTING = frozenset({ActionKind.RECREATE, ActionKind.CREATE, ActionKind.ADOPT, ActionKind.UPDATE})
# a dependency with one of these actions cannot carry its dependents in this pass
_UNUSABLE = frozenset({ActionKind.FORGET, ActionKind.CONFLICT, ActionKind.BLOCKED, *REMOVALS})
# among actions whose dependencies are met, the order the planner always had
_RANK = {
    ActionKind.SWEEP: 0,
    ActionKind.DELETE: 1,
    ActionKind.FORGET: 2,
    ActionKind.RECREATE: 3,
    ActionKind.CREATE: 4,
    ActionKind.ADOPT: 5,
    ActionKind.UPDATE: 6,
    ActionKind.CONFLICT: 7,
    ActionKind.BLOCKED: 8,
    ActionKind.SETTLED: 9,
}


def order_actions(actions: list[Action], existing: Collection[str] | None = None) -> list[Action]:
    """`actions` in an order in which every step can succeed: removals (SWEEP, DELETE)
    first, each link before the links it sits on (its master, its parent, as the kernel
    reports them); then the rest, each link after the links its driver says it depends on.

    `existing`: the names of every link in the kernel, when the caller dumped them all; a
    dependency neither planned nor existing then blocks its dependent. Without it, such a
    dependency is outside this pass and left to the host (which reports a missing one)."""
    removals = [i for i, a in enumerate(actions) if a.kind in REMOVALS]
    others = [i for i, a in enumerate(actions) if a.kind not in REMOVALS]
    blocked: dict[int, str] = {}
    removal_deps = _removal_dependencies(actions, removals)
    other_deps = _dependencies(actions, others, existing, blocked)

    def rank(i: int) -> tuple[int, int]:
        return (_RANK[actions[i].kind], i)

    # only links that change need an order among themselves (the rest do nothing on the
    # host): a full pass with nothing to do sorts no graph
    acting = [i for i in others if actions[i].kind in ACTING and i not in blocked]
    acting_set = set(acting)
    quiet = sorted((i for i in others if i not in acting_set), key=rank)
    ordered = _topological(removals, removal_deps, rank, actions, blocked)
    ordered += [i for i in quiet if actions[i].kind is ActionKind.FORGET]
    ordered += _topological(acting, other_deps, rank, actions, blocked)
    ordered += [i for i in quiet if actions[i].kind is not ActionKind.FORGET]
    result = []
    for i in ordered:
        action = actions[i]
        if i in blocked and action.spec is not None:
            action = Action(
                ActionKind.BLOCKED, action.name, action.spec, action.observed, reason=blocked[i]
            )
        result.append(action)
    return result


def _removal_dependencies(actions: list[Action], nodes: list[int]) -> dict[int, set[int]]:
    """For removals, a link goes before the links it sits on, so each of those waits for
    the links on it: as the kernel reports them (master, IFLA_LINK parent) and as their
    drivers declare them (a bridge that uses a VLAN sub-interface goes before it). Should
    the declared ones contradict the kernel (a cycle), the kernel's view alone decides:
    a removal is never blocked."""
    links = {i: link for i in nodes if (link := actions[i].observed) is not None}
    node_by_index = {link.index: i for i, link in links.items()}
    node_by_name = {actions[i].name: i for i in nodes}
    kernel: dict[int, set[int]] = {i: set() for i in nodes}
    for i, link in links.items():
        for lower in (link.master_index, link.parent_index):
            j = node_by_index.get(lower) if lower is not None else None
            if j is not None and j != i:
                kernel[j].add(i)
    declared = {i: set(waits) for i, waits in kernel.items()}
    for i in nodes:
        spec = actions[i].spec
        driver = find_driver(spec.kind) if spec is not None else None
        if spec is None or driver is None:
            continue
        for name in driver.dependencies(spec):
            j = node_by_name.get(name)
            if j is not None and j != i:
                declared[j].add(i)
    try:
        TopologicalSorter(declared).prepare()
    except CycleError:
        return kernel
    return declared


def _dependencies(
    actions: list[Action],
    nodes: list[int],
    existing: Collection[str] | None,
    blocked: dict[int, str],
) -> dict[int, set[int]]:
    """For everything else, the drivers' declared dependencies on the desired side; a
    dependency that is going away, held by a foreign link or missing blocks the dependent."""
    by_name = {a.name: i for i, a in enumerate(actions) if a.spec is None}  # sweeps
    by_name.update({a.name: i for i, a in enumerate(actions) if a.spec is not None})
    waits: dict[int, set[int]] = {i: set() for i in nodes}
    for i in nodes:
        action = actions[i]
        if action.spec is None or action.kind in (ActionKind.FORGET, ActionKind.BLOCKED):
            continue
        driver = find_driver(action.spec.kind)
        if driver is None:
            continue
        for name in driver.dependencies(action.spec):
            j = by_name.get(name)
            if j is None:
                if existing is not None and name not in existing:
                    blocked[i] = f"depends on link {name!r}, which does not exist"
                continue
            if actions[j].kind in _UNUSABLE and action.kind is not ActionKind.CONFLICT:
                blocked[i] = f"depends on link {name!r}, which {_unusable(actions[j])}"
            elif j in waits:
                waits[i].add(j)
    return waits


def _unusable(action: Action) -> str:
    if action.kind in (ActionKind.DELETE, ActionKind.FORGET, ActionKind.SWEEP):
        return "is being deleted"
    return f"cannot be set up ({action.reason})"


def _topological(
    nodes: list[int],
    waits: Mapping[int, set[int]],
    rank: Callable[[int], tuple[int, int]],
    actions: list[Action],
    blocked: dict[int, str],
) -> list[int]:
    """`nodes` in dependency order, each ready batch by `rank` (dependencies outside
    `nodes` need no order). The links of a cycle are blocked (reason: the cycle) and the
    rest is ordered without them."""
    members = set(nodes)
    while True:
        graph = {i: (waits[i] & members) - blocked.keys() for i in nodes if i not in blocked}
        sorter: TopologicalSorter[int] = TopologicalSorter(graph)
        try:
            sorter.prepare()
        except CycleError as exc:
            cycle: list[int] = exc.args[1]
            path = " -> ".join(actions[i].name for i in reversed(cycle))
            for i in cycle:
                blocked[i] = f"dependency cycle: {path}"
            continue
        order: list[int] = []
        while sorter.is_active():
            ready = sorted(sorter.get_ready(), key=rank)
            order.extend(ready)
            sorter.done(*ready)
        return order + sorted((i for i in nodes if i in blocked), key=rank)
