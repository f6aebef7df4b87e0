"""The data of the link planner: desired specs, observed links, the ownership mark, the
changes and actions it plans. Kind-specific meaning lives in the drivers (app.domain.links.
driver and one module per kind); a new kind carries its own settings in `LinkSpec.options`
and its own observations in `ObservedLink.details`, so these types need no new fields."""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
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
    VLAN = "vlan"  # an 802.1Q sub-interface (app.domain.links.vlan)


def ownership_mark(kind: LinkKind, resource_id: str) -> str:
    """The ifalias we put on every link we own: `kvmnetd:<kind>:<resource id>`."""
    return f"{MARK_PREFIX}{kind}:{resource_id}"


def parse_mark(alias: str | None) -> tuple[LinkKind, str] | None:
    """(kind, resource id) from an ifalias we wrote, or None for anything else."""
    if not alias or not alias.startswith(MARK_PREFIX):
        return None
    kind, _, resource_id = alias[len(MARK_PREFIX) :].partition(":")
    if not resource_id or kind not in LinkKind._value2member_map_:
        return None
    return LinkKind(kind), resource_id


@dataclass(frozen=True)
class LinkOptions:
    """Base of a kind's own desired settings (`LinkSpec.options`): a kind added later (an
    802.1Q sub-interface: VLAN id, protocol) defines a frozen subclass in its driver module.
    Bridges and taps keep their settings as the flat fields of LinkSpec they always had."""


@dataclass(frozen=True)
class LinkDetails:
    """Base of a kind's own observations (`ObservedLink.details`), decoded by its host
    driver from IFLA_INFO_DATA; compared as a whole in the fingerprint."""


@dataclass(frozen=True)
class LinkSpec:
    """What the database wants for one link. Bridge- and tap-only fields keep defaults;
    `parent` is the link this one is stacked on (IFLA_LINK: a VLAN sub-interface's trunk),
    `options` the settings of kinds that have no flat fields here."""

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
    # a port of a bridge (a tap): master, and the port flag IFLA_BRPORT_ISOLATED, set
    # whenever it sits on a bridge (app.domain.links.driver: a port joining starts off)
    master: str | None = None
    isolated: bool = False
    # why the tap joins no bridge although its row names one (its VLAN offers none: a
    # failed filtering trunk); the link is made all the same, and its row says this
    held: str | None = None
    owner_uid: int | None = None
    owner_gid: int | None = None
    multi_queue: bool = False
    vnet_hdr: bool = False
    # stacked kinds (VLAN sub-interface, macvtap, VXLAN) and their own settings
    parent: str | None = None
    options: LinkOptions | None = None

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
    parent_index: int | None = None  # IFLA_LINK: the lower link of a stacked one, else None
    details: LinkDetails | None = None  # a kind's own observations (its host driver's)
    # a bridge port's IFLA_BRPORT_ISOLATED; None for a link that is no bridge port
    port_isolated: bool | None = None

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
    parent_index: int | None = None
    kind_state: tuple[object, ...] = ()  # what the link's driver watches (LinkDriver.watched)
    port_isolated: bool | None = None  # a bridge port's isolation flag (None: no port)


class ActionKind(enum.StrEnum):
    CREATE = "create"  # link missing: create it, mark it, configure it
    ADOPT = "adopt"  # our interrupted create left it unmarked: mark and configure
    UPDATE = "update"  # ours, attributes differ
    RECREATE = "recreate"  # ours, but an attribute only creation can set differs
    DELETE = "delete"  # ours and deleted in the database
    FORGET = "forget"  # deleted in the database and nothing of ours is left
    SWEEP = "sweep"  # ours (marked) but no longer in the database: an orphan
    CONFLICT = "conflict"  # a foreign link holds the name: never touched
    BLOCKED = "blocked"  # cannot be planned: no driver, a dependency cycle or a missing parent
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
    options: LinkOptions | None = None  # a later kind's own settings to apply (its driver's)
    isolated: bool | None = None  # the bridge port flag to set, after joining `master`

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
