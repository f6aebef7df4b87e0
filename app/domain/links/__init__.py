"""Kernel links: desired specs, observed links, the ownership mark, one driver per link kind
and the reconcile planner that orders their actions by declared dependencies.

- model: the data (LinkSpec, ObservedLink, LinkChanges, Action, the mark, MTU rules)
- driver: LinkDriver, the common base of the kinds, and the map from LinkKind to driver
- bridge, tap, vlan: the kinds we have (a new kind is a new module here, one in app.host.links,
  and its import below)
- planner: plan(), plan_link(), order_actions(), fingerprint()

Every name other modules imported from app.domain.links before it became a package is
re-exported here.
"""

from __future__ import annotations

from app.domain.links import bridge as bridge
from app.domain.links import tap as tap
from app.domain.links import vlan as vlan
from app.domain.links.driver import (
    LinkDriver,
    driver_for_link,
    find_driver,
    managed_addresses,
    register,
    registered_kinds,
)
from app.domain.links.model import (
    DEFAULT_MTU,
    MARK_PREFIX,
    Action,
    ActionKind,
    Fingerprint,
    LinkChanges,
    LinkDetails,
    LinkKind,
    LinkOptions,
    LinkSpec,
    ObservedLink,
    bridge_mtu,
    generate_mac,
    ownership_mark,
    parse_mark,
    tap_mtu,
)
from app.domain.links.planner import (
    diff_link,
    fingerprint,
    order_actions,
    plan,
    plan_link,
)


def changes_for_new_link(spec: LinkSpec) -> LinkChanges:
    """Everything to set on a link we just created, our mark included (its driver's)."""
    return (find_driver(spec.kind) or LinkDriver()).new_link_changes(spec)


__all__ = [
    "DEFAULT_MTU",
    "MARK_PREFIX",
    "Action",
    "ActionKind",
    "Fingerprint",
    "LinkChanges",
    "LinkDetails",
    "LinkDriver",
    "LinkKind",
    "LinkOptions",
    "LinkSpec",
    "ObservedLink",
    "bridge_mtu",
    "changes_for_new_link",
    "diff_link",
    "driver_for_link",
    "find_driver",
    "fingerprint",
    "generate_mac",
    "managed_addresses",
    "order_actions",
    "ownership_mark",
    "parse_mark",
    "plan",
    "plan_link",
    "register",
    "registered_kinds",
    "tap_mtu",
]
