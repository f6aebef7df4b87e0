"""Desired and observed kernel links, the ownership mark, and the pure reconcile planner.

The planner compares what the database wants (specs) with what the kernel has (observed
links) and returns the actions that make them equal. It never touches a link that does not
carry our ownership mark, except one that is provably ours: we journaled `create_intent`
before the create call (a crash between create and mark), or it is the very link (same
ifindex; the kernel does not reuse indexes soon) whose mark someone removed by hand.
"""

from __future__ import annotations

import enum
import ipaddress
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

MARK_PREFIX = "kvmnetd:"
# a new link's MTU in the kernel (ETH_DATA_LEN, include/uapi/linux/if_ether.h): what a bridge
# without an MTU of its own keeps, and what a tap on no bridge and without its own MTU has
DEFAULT_MTU = 1500


def generate_mac(random_bytes: Callable[[int], bytes] = os.urandom) -> str:
    """A locally administered unicast MAC (IEEE 802: in the first octet the U/L bit 0x02
    set, the I/G bit 0x01 clear), for a bridge to keep for its whole life: a bridge whose MAC
    nobody set takes the lowest MAC of its ports (net/bridge/br_stp_if.c,
    br_stp_recalculate_bridge_id), so its gateway MAC would change whenever a port comes or
    goes. One set explicitly (addr_assign_type NET_ADDR_SET) is never recalculated."""
    raw = bytearray(random_bytes(6))
    raw[0] = (raw[0] & 0xFC) | 0x02
    return raw.hex(":")


def bridge_mtu(own: int | None, uplink: int | None = None) -> int:
    """The MTU a bridge keeps: its own, else its uplink NIC's while one is attached (the
    host's traffic leaves through it), else the kernel's default it was created with. Set
    explicitly, so the kernel stops following the smallest port (net/bridge/br_if.c,
    br_mtu_auto_adjust: only while BROPT_MTU_SET_BY_USER is off)."""
    return own if own is not None else uplink if uplink is not None else DEFAULT_MTU


def tap_mtu(own: int | None, bridge: int | None) -> int:
    """The MTU a tap gets: its own, else its bridge's (a port with a smaller MTU than its
    bridge drops the bridge's larger frames), else the kernel's default."""
    return own if own is not None else bridge if bridge is not None else DEFAULT_MTU


class LinkKind(enum.StrEnum):
    BRIDGE = "bridge"
    TAP = "tap"


def ownership_mark(kind: LinkKind, resource_id: str) -> str:
    """The ifalias we put on every link we own: `kvmnetd:<kind>:<resource id>`."""
    return f"{MARK_PREFIX}{kind.value}:{resource_id}"


def parse_mark(alias: str | None) -> tuple[LinkKind, str] | None:
    """(kind, resource id) from an ifalias we wrote, or None for anything else."""
    if not alias or not alias.startswith(MARK_PREFIX):
        return None
    kind, _, resource_id = alias[len(MARK_PREFIX) :].partition(":")
    if not resource_id or kind not in LinkKind._value2member_map_:
        return None
    return LinkKind(kind), resource_id


@dataclass(frozen=True)
class LinkSpec:
    """What the database wants for one link. Bridge- and tap-only fields keep defaults."""

    id: str
    kind: LinkKind
    name: str
    mtu: int | None = None
    mac: str | None = None
    addresses: tuple[str, ...] = ()
    deleted: bool = False
    create_intent: bool = False
    ifindex: int | None = None  # the kernel index we last saw our link at
    # bridge
    stp: bool = False
    forward_delay_cs: int = 0
    # tap
    master: str | None = None
    owner_uid: int | None = None
    owner_gid: int | None = None
    multi_queue: bool = False
    vnet_hdr: bool = False

    @property
    def mark(self) -> str:
        return ownership_mark(self.kind, self.id)


@dataclass(frozen=True)
class ObservedLink:
    """What the kernel reports for one link (only the fields we manage)."""

    index: int
    name: str
    kind: str | None
    alias: str | None = None
    mtu: int = 1500
    mac: str | None = None
    up: bool = False
    oper_state: str | None = None  # RFC 2863 ifOperStatus as the kernel reports it (IFLA_OPERSTATE)
    master_index: int | None = None
    addresses: tuple[str, ...] = ()
    stp: bool | None = None
    forward_delay_cs: int | None = None
    tun_type: int | None = None  # 1 tun, 2 tap
    tun_owner: int | None = None
    tun_group: int | None = None
    tun_multi_queue: bool | None = None
    tun_vnet_hdr: bool | None = None

    @property
    def owner(self) -> tuple[LinkKind, str] | None:
        return parse_mark(self.alias)


@dataclass(frozen=True)
class Fingerprint:
    """The attributes of a settled link that are looked at again the moment netlink reports
    a change: a managed one changed by hand is repaired, an observed one (MAC, MTU, oper
    state) is recorded on the row at once."""

    master_index: int | None
    mtu: int
    mac: str | None
    up: bool
    oper_state: str | None
    stp: bool | None
    forward_delay_cs: int | None


def fingerprint(link: ObservedLink) -> Fingerprint:
    return Fingerprint(
        link.master_index,
        link.mtu,
        link.mac,
        link.up,
        link.oper_state,
        link.stp,
        link.forward_delay_cs,
    )


class ActionKind(enum.StrEnum):
    CREATE = "create"  # link missing: create it, mark it, configure it
    ADOPT = "adopt"  # our interrupted create left it unmarked: mark and configure
    UPDATE = "update"  # ours, attributes differ
    RECREATE = "recreate"  # ours, but an attribute only creation can set differs
    DELETE = "delete"  # ours and deleted in the database
    FORGET = "forget"  # deleted in the database and nothing of ours is left
    SWEEP = "sweep"  # ours (marked) but no longer in the database: an orphan
    CONFLICT = "conflict"  # a foreign link holds the name: never touched
    SETTLED = "settled"  # nothing to do


@dataclass(frozen=True)
class LinkChanges:
    """The attribute changes an UPDATE/ADOPT applies; empty fields mean 'leave alone'."""

    mtu: int | None = None
    mac: str | None = None
    set_up: bool = False
    master: str | None = None  # bridge name to enslave to
    nomaster: bool = False
    stp: bool | None = None
    forward_delay_cs: int | None = None
    add_addresses: tuple[str, ...] = ()
    remove_addresses: tuple[str, ...] = ()
    mark: str | None = None

    def empty(self) -> bool:
        return self == LinkChanges()


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    name: str
    spec: LinkSpec | None = None
    observed: ObservedLink | None = None
    changes: LinkChanges = field(default_factory=LinkChanges)
    reason: str = ""


def _managed_addresses(addresses: Iterable[str]) -> set[str]:
    """Addresses we manage: everything but IPv6 link-local, which the kernel owns."""
    managed = set()
    for addr in addresses:
        iface = ipaddress.ip_interface(addr)
        if isinstance(iface.ip, ipaddress.IPv6Address) and iface.ip.is_link_local:
            continue
        managed.add(str(iface))
    return managed


def _immutable_mismatch(spec: LinkSpec, link: ObservedLink) -> str | None:
    """Why the link must be re-created, or None. multi_queue and the owner can only be set
    at creation. vnet_hdr (like pi) is not compared: whoever opens the tap (qemu) sets it
    for its own use, and re-creating the tap under an open qemu would cut the VM off."""
    expected_kind = "bridge" if spec.kind is LinkKind.BRIDGE else "tun"
    if link.kind != expected_kind:
        return f"link kind is {link.kind}, want {expected_kind}"
    if spec.kind is LinkKind.TAP:
        if link.tun_type != 2:
            return "link is a tun, not a tap"
        if bool(link.tun_multi_queue) != spec.multi_queue:
            return "multi_queue differs"
        if link.tun_owner != spec.owner_uid or link.tun_group != spec.owner_gid:
            return "owner differs"
    return None


def diff_link(
    spec: LinkSpec, link: ObservedLink, masters: dict[int, str], mark: str | None = None
) -> LinkChanges:
    """The changes that bring `link` to `spec` (mutable attributes only)."""
    want = _managed_addresses(spec.addresses)
    have = _managed_addresses(link.addresses)
    current_master = masters.get(link.master_index) if link.master_index else None
    master: str | None = None
    nomaster = False
    if spec.kind is LinkKind.TAP:
        if spec.master is not None and current_master != spec.master:
            master = spec.master
        elif spec.master is None and link.master_index:
            nomaster = True
    return LinkChanges(
        mtu=spec.mtu if spec.mtu is not None and spec.mtu != link.mtu else None,
        mac=spec.mac if spec.mac is not None and spec.mac != link.mac else None,
        set_up=not link.up,
        master=master,
        nomaster=nomaster,
        stp=spec.stp if spec.kind is LinkKind.BRIDGE and link.stp != spec.stp else None,
        forward_delay_cs=(
            spec.forward_delay_cs
            if spec.kind is LinkKind.BRIDGE and link.forward_delay_cs != spec.forward_delay_cs
            else None
        ),
        add_addresses=tuple(sorted(want - have)),
        remove_addresses=tuple(sorted(have - want)),
        mark=mark,
    )


def plan_link(spec: LinkSpec, link: ObservedLink | None, masters: dict[int, str]) -> Action:
    """The one action that brings a single desired link in line with the kernel."""
    if spec.deleted:
        if link is not None and link.alias == spec.mark:
            return Action(ActionKind.DELETE, spec.name, spec, link)
        return Action(ActionKind.FORGET, spec.name, spec, link)
    if link is None:
        return Action(ActionKind.CREATE, spec.name, spec)
    if link.alias != spec.mark:
        if link.owner is not None:
            return Action(ActionKind.RECREATE, spec.name, spec, link, reason="stale link of ours")
        provably_ours = spec.create_intent or spec.ifindex == link.index
        if provably_ours and _immutable_mismatch(spec, link) is None:
            changes = diff_link(spec, link, masters, mark=spec.mark)
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
    why = _immutable_mismatch(spec, link)
    if why is not None:
        return Action(ActionKind.RECREATE, spec.name, spec, link, reason=why)
    changes = diff_link(spec, link, masters)
    if changes.empty():
        return Action(ActionKind.SETTLED, spec.name, spec, link)
    return Action(ActionKind.UPDATE, spec.name, spec, link, changes)


def plan(
    specs: Iterable[LinkSpec], observed: Iterable[ObservedLink], keep_ids: Iterable[str] = ()
) -> list[Action]:
    """A full reconcile plan, ordered so that every step can succeed.

    Order: sweep orphans and delete first (frees names), then bridges before taps (a tap
    needs its master to exist), and conflicts/settled last (they change nothing). Links of
    `keep_ids` (rows that exist but cannot be read) are no orphans: they are left alone.
    """
    by_name = {link.name: link for link in observed}
    masters = {link.index: link.name for link in by_name.values()}
    wanted_ids = set(keep_ids)
    actions: list[Action] = []
    for spec in specs:
        wanted_ids.add(spec.id)
        actions.append(plan_link(spec, by_name.get(spec.name), masters))
    claimed = {a.observed.index for a in actions if a.observed is not None}
    for link in by_name.values():
        owner = link.owner
        if owner is not None and owner[1] not in wanted_ids and link.index not in claimed:
            actions.append(Action(ActionKind.SWEEP, link.name, observed=link, reason="orphan"))
    return sorted(actions, key=_action_order)


_ORDER = {
    ActionKind.SWEEP: 0,
    ActionKind.DELETE: 1,
    ActionKind.FORGET: 2,
    ActionKind.RECREATE: 3,
    ActionKind.CREATE: 4,
    ActionKind.ADOPT: 5,
    ActionKind.UPDATE: 6,
    ActionKind.CONFLICT: 7,
    ActionKind.SETTLED: 8,
}


def _action_order(action: Action) -> tuple[int, int, int]:
    """Removals first (taps before bridges), then the rest (bridges before taps)."""
    is_tap = (action.spec.kind if action.spec else None) is LinkKind.TAP or (
        action.spec is None and action.observed is not None and action.observed.kind == "tun"
    )
    if action.kind in (ActionKind.SWEEP, ActionKind.DELETE):
        return (0, 0 if is_tap else 1, _ORDER[action.kind])
    return (1, 1 if is_tap else 0, _ORDER[action.kind])


def changes_for_new_link(spec: LinkSpec) -> LinkChanges:
    """Everything to set on a link we just created, our mark included."""
    return LinkChanges(
        mtu=spec.mtu,
        mac=spec.mac,
        set_up=True,
        master=spec.master,
        add_addresses=tuple(spec.addresses),
        mark=spec.mark,
    )
