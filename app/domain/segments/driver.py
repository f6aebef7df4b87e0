"""L2 segment kinds as drivers, the pure half: what a network or a NIC attaches to, and the
kernel links that follow from it. The database half (where a kind's objects are stored and
how a network or NIC row points at one) lives in app.db.repositories.segments.

The shape is the one of app.domain.links and app.domain.nics (Incus's network drivers,
internal/server/network/network_load.go: a map from type name to driver; Neutron's
`provider:network_type`): one module per kind subclasses `SegmentDriver` and registers it;
the rest of the daemon asks the registry which interface carries a network's gateway,
dnsmasq and NAT, which bridge a NIC's tap joins and which VLAN that port is an access port
of. Nothing else switches on the kind.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, TypeVar

from app.domain.errors import DomainError, InvalidInput
from app.domain.registry import Registry

if TYPE_CHECKING:
    from app.domain.vlans import VlanFacts


class Joiner(enum.StrEnum):
    """What asks to join a segment (a kind's join rule may depend on it); the value is how
    messages name it."""

    NETWORK = "a network"  # a managed network, its gateway on the segment's L3 interface
    VM_NIC = "a VM NIC"  # a VM NIC's tap, or one of our tap resources a NIC uses
    TAP = "a tap"  # one of our tap resources placed on a bridge or VLAN


class SegmentKind(enum.StrEnum):
    """The built-in kinds (a registered driver's `kind` may be any other name)."""

    BRIDGE = "bridge"  # one of our bridges: a flat L2 segment, its own L3 interface
    TAP = "tap"  # one of our tap resources, routed: the tap itself carries L3
    VLAN = "vlan"  # a VLAN on a trunk bridge (app.domain.vlans): either backend


@dataclass(frozen=True)
class SegmentObject:
    """The object a segment is, as the database knows it (plain data). Fields a kind does
    not use stay at their defaults."""

    kind: str
    id: str  # the row's id (a bridge's, a tap's, a VLAN's)
    name: str  # the resource's name (for messages)
    link: str | None = None  # its own kernel link (a bridge's or tap's name)
    trunk: str | None = None  # a VLAN's trunk bridge (kernel name)
    vid: int | None = None  # a VLAN's id (1-4094)
    backend: str | None = None  # a VLAN's backend (app.domain.vlans.VlanBackend)
    forward_delay_s: float = 0.0  # a bridge's STP forward delay (0 with STP off), seconds
    status: str | None = None  # its observed status (app.domain.status.Status)
    status_reason: str | None = None  # why it is in that status (set in `error`)
    # in error without ever holding a kernel link (a bridge or tap whose name was taken)
    never_created: bool = False


@dataclass(frozen=True)
class Segment:
    """What the rest of the daemon needs to know of a segment.

    - `l3_interface`: the kernel link that carries L3 for a network on it: the gateway
      address, the interface dnsmasq binds to, the one the NAT rules and diagnostics name;
    - `master`: the bridge a NIC's tap joins on this segment (None: no bridge; the segment
      is the NIC's tap itself, a routed tap);
    - `access_vid`: the VLAN a port on it is an access port of on a VLAN-filtering bridge
      (`bridge vlan add ... pvid untagged`, bridge(8)); None: untagged, no membership;
    - `probe_bridge`: the bridge on which the path probe can put a throwaway port to act
      as a guest (None: not probed), and `probe_delay_s` how long a new port there waits
      before it forwards (STP forward delay, IEEE 802.1D), seconds.
    """

    kind: str
    id: str
    name: str
    l3_interface: str
    master: str | None = None
    access_vid: int | None = None
    probe_bridge: str | None = None
    probe_delay_s: float = 0.0


class SegmentDriver:
    """The common base of every segment kind: a segment that is one kernel link of its own
    (the object's `link`), which is also what a NIC's tap joins. Kinds override only where
    they differ. Instances are stateless: one per kind, in the registry."""

    kind: ClassVar[str] = ""
    label: ClassVar[str] = ""  # what messages call it ("bridge", "tap", "VLAN")

    def l3_interface(self, obj: SegmentObject) -> str:
        if obj.link is None:
            raise InvalidInput(f"{self.label or self.kind} {obj.name!r} has no kernel link")
        return obj.link

    def master(self, obj: SegmentObject) -> str | None:
        return obj.link

    def access_vid(self, obj: SegmentObject) -> int | None:
        return None

    def probe_bridge(self, obj: SegmentObject) -> str | None:
        return self.master(obj)

    def join_refusal(self, obj: SegmentObject, joiner: Joiner) -> str | None:
        """Why `joiner` may not join `obj` now (the service answers 409 Conflict with it),
        or None. The lookup's rules hold for every kind before this is asked: an unknown
        object is 404, one being deleted 409. Base: nothing more."""
        return None

    def unknown(self, ref: str, host: VlanFacts | None) -> DomainError | None:
        """The answer when no object of this kind is named `ref`, given what the probed
        kernel offers (`host`, None when not known): None for the plain 404; a kind the host
        cannot carry at all says so instead (VLAN: 409 host-lacks-feature). Base: None."""
        return None

    def describe(self, obj: SegmentObject) -> Segment:
        """The segment an object of this kind is."""
        return Segment(
            kind=obj.kind,
            id=obj.id,
            name=obj.name,
            l3_interface=self.l3_interface(obj),
            master=self.master(obj),
            access_vid=self.access_vid(obj),
            probe_bridge=self.probe_bridge(obj),
            probe_delay_s=obj.forward_delay_s,
        )


DRIVERS: Registry[SegmentDriver] = Registry(
    "segment kind", [k.value for k in SegmentKind], unknown=InvalidInput
)

D = TypeVar("D", bound=type[SegmentDriver])


def register(driver: D) -> D:
    """Class decorator: make `driver` the one of its `kind` (ValueError when taken)."""
    DRIVERS.add(driver.kind, driver())
    return driver


def unregister(kind: str) -> None:
    DRIVERS.remove(kind)


@contextlib.contextmanager
def registered(driver: type[SegmentDriver]) -> Iterator[SegmentDriver]:
    """`driver` registered for the duration of the block (tests)."""
    with DRIVERS.registered(driver.kind, driver()) as instance:
        yield instance


def kinds() -> list[str]:
    """The registered kinds: the built-in ones in SegmentKind's order, then the others."""
    return DRIVERS.names()


def find_driver(kind: str) -> SegmentDriver | None:
    return DRIVERS.find(kind)


def segment_driver(kind: str) -> SegmentDriver:
    """The driver of `kind`; InvalidInput naming the known ones otherwise (a row written by
    a newer version, say)."""
    return DRIVERS.get(kind)


def describe(obj: SegmentObject) -> Segment:
    """The segment `obj` is, by its kind's driver."""
    return segment_driver(obj.kind).describe(obj)
