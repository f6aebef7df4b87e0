"""Per-port VLAN membership of a VLAN-filtering bridge, pure: what each port should carry
(like `bridge vlan show`), and the add/del steps that turn what the kernel has into that.

Vocabulary (IEEE 802.1Q, as the Linux bridge implements it, Documentation/networking/
switchdev.rst and bridge(8) `bridge vlan`):
- a membership is one VLAN id on one port, with two flags: `pvid` (untagged frames that
  enter the port belong to this VLAN; at most one per port) and `untagged` (frames of this
  VLAN leave the port without a tag);
- an access port (a VM's tap on a VLAN) is one membership with PVID and untagged;
- a trunk port (the uplink, or a trunk NIC) carries its VLANs tagged, plus an optional
  native VLAN: the PVID, untagged;
- the bridge's own port ("self", `bridge vlan add dev br0 vid 10 self`) stands for the host:
  it joins a VLAN only when the host needs an address on it, tagged, because the host's L3
  interface is an 802.1Q sub-interface `<bridge>.<vid>` of the bridge device.

The bridge's own port is keyed by the bridge's own name, as `bridge vlan show` lists it.

The default_pvid rule (net/bridge/br_vlan.c, br_vlan_init and nbp_vlan_init): when a port
joins a filtering bridge, and when the bridge itself is created, the kernel adds the bridge's
`default_pvid` to it as PVID + untagged, unless default_pvid is 0 (then nothing is added).
Such a membership is removed unless the plan wants it; no step ever names VLAN 0.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from app.domain.errors import InvalidInput

VID_MIN = 1
VID_MAX = 4094  # 0 and 4095 are reserved (IEEE 802.1Q, table 9-2)
DEFAULT_PVID_OFF = 0  # IFLA_BR_VLAN_DEFAULT_PVID 0: ports joining get no VLAN at all


def check_vid(vid: int) -> int:
    """`vid` itself when it is a usable VLAN id (1-4094); InvalidInput otherwise."""
    if isinstance(vid, bool) or not isinstance(vid, int) or not VID_MIN <= vid <= VID_MAX:
        raise InvalidInput(f"VLAN id {vid!r} is outside {VID_MIN}-{VID_MAX}")
    return vid


@dataclass(frozen=True, order=True)
class Membership:
    """One VLAN on one port: `pvid` (untagged ingress lands here) and `untagged` (egress
    without a tag). A plain tagged member has neither flag."""

    vid: int
    pvid: bool = False
    untagged: bool = False

    def __post_init__(self) -> None:
        check_vid(self.vid)


PortVlans = Mapping[int, Membership]  # vid -> membership, of one port
BridgeVlans = Mapping[str, PortVlans]  # port name (the bridge's own name: "self") -> VLANs


def _port(memberships: Iterable[Membership]) -> dict[int, Membership]:
    result: dict[int, Membership] = {}
    for member in memberships:
        if member.vid in result:
            raise InvalidInput(f"VLAN {member.vid} is listed twice on one port")
        result[member.vid] = member
    pvids = [m.vid for m in result.values() if m.pvid]
    if len(pvids) > 1:
        raise InvalidInput(f"a port has one PVID at most, not {sorted(pvids)}")
    return result


def access_port(vid: int) -> dict[int, Membership]:
    """A port on one VLAN, unaware of tags: `bridge vlan add vid N pvid untagged`."""
    return _port([Membership(vid, pvid=True, untagged=True)])


def trunk_port(tagged: Iterable[int], native: int | None = None) -> dict[int, Membership]:
    """A port that carries `tagged` VLANs with their tag, plus an optional native VLAN that
    crosses it untagged (its PVID). A native VLAN that is also in `tagged` is refused: one
    VLAN cannot leave a port both tagged and untagged."""
    tagged = list(tagged)
    if native is not None and native in tagged:
        raise InvalidInput(f"VLAN {native} cannot be both tagged and the native VLAN")
    members = [Membership(vid) for vid in tagged]
    if native is not None:
        members.append(Membership(native, pvid=True, untagged=True))
    return _port(members)


def bridge_self(l3_vids: Iterable[int]) -> dict[int, Membership]:
    """The bridge's own port: tagged members of exactly the VLANs on which the host has an
    L3 interface `<bridge>.<vid>` (the kernel hands those frames up tagged, and the 802.1Q
    sub-interface strips the tag). Without this membership the bridge drops the host's own
    frames on that VLAN (br_allowed_ingress / br_allowed_egress), so its address goes silent."""
    return _port(Membership(vid) for vid in l3_vids)


def on_join(default_pvid: int) -> dict[int, Membership]:
    """What the kernel gives a port when it joins a filtering bridge whose default PVID is
    `default_pvid` (and the bridge itself at creation): that VLAN as PVID + untagged, or
    nothing at all when it is 0."""
    if default_pvid == DEFAULT_PVID_OFF:
        return {}
    return access_port(default_pvid)


class StepOp(enum.StrEnum):
    ADD = "add"  # also changes the flags of a VLAN the port already has
    DEL = "del"


@dataclass(frozen=True)
class VlanStep:
    """One `bridge vlan add|del dev <port> vid <vid> [pvid] [untagged] [self]`."""

    op: StepOp
    port: str
    vid: int
    pvid: bool = False
    untagged: bool = False
    self_port: bool = False  # the bridge's own port: the `self` flag (BRIDGE_FLAGS_SELF)

    def describe(self) -> str:
        words = ["bridge vlan", self.op.value, "dev", self.port, "vid", str(self.vid)]
        if self.op is StepOp.ADD:
            words += [w for w, on in (("pvid", self.pvid), ("untagged", self.untagged)) if on]
        if self.self_port:
            words.append("self")
        return " ".join(words)


def plan_port(
    port: str, desired: PortVlans, observed: PortVlans, *, self_port: bool = False
) -> list[VlanStep]:
    """Steps that give `port` exactly the `desired` VLANs. Adds come first: an access port
    that moves from one VLAN to another gets its new PVID (the kernel moves the PVID flag)
    before the old VLAN goes, so it never has no PVID in between. A VLAN the port has with
    other flags is re-added with the wanted ones (the kernel updates the flags in place)."""
    _port(desired.values())  # one PVID at most, keys match
    for vid, member in desired.items():
        if member.vid != vid:
            raise InvalidInput(f"VLAN {member.vid} is filed under {vid}")
    adds = [
        VlanStep(StepOp.ADD, port, vid, member.pvid, member.untagged, self_port)
        for vid, member in sorted(desired.items())
        if observed.get(vid) != member
    ]
    dels = [
        VlanStep(StepOp.DEL, port, vid, self_port=self_port)
        for vid in sorted(observed)
        if vid not in desired
    ]
    return adds + dels


def plan_bridge(bridge: str, desired: BridgeVlans, observed: BridgeVlans) -> list[VlanStep]:
    """Steps for every port named in `desired` (the bridge's own port under the bridge's
    name). Ports that `desired` does not name are never touched (not ours); a port named with
    no VLANs loses all it has."""
    steps: list[VlanStep] = []
    for port in sorted(desired, key=lambda name: (name != bridge, name)):
        steps += plan_port(port, desired[port], observed.get(port, {}), self_port=port == bridge)
    return steps


def plan_join(port: str, desired: PortVlans, default_pvid: int) -> list[VlanStep]:
    """Steps to run right after `port` joined a filtering bridge, without reading it back:
    the kernel has just given it `on_join(default_pvid)`. With default_pvid 0 that is
    nothing, so nothing is removed; otherwise the default PVID goes unless it is wanted."""
    return plan_port(port, desired, on_join(default_pvid))
