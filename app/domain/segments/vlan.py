"""The `vlan` segment kind: a VLAN on one of our bridges, the trunk (Neutron's network of
type vlan). Where things go follows from the VLAN's backend (app.domain.vlans):
- vlan_filtering: ports join the trunk as access ports of the VID (PVID + untagged,
  bridge(8) `bridge vlan add`); the host's L3 interface is the trunk's `<bridge>.<vid>`;
  the path probe is not run there (its port would need the VLAN membership set);
- bridge_per_vlan: ports join the VLAN's own bridge `<trunk>v<vid>` untagged, which is also
  the L3 interface and where the path probe puts its port.
"""

from __future__ import annotations

from typing import ClassVar

from app.domain.errors import DomainError, InvalidInput
from app.domain.segments.driver import (
    Joiner,
    SegmentDriver,
    SegmentKind,
    SegmentObject,
    register,
)
from app.domain.status import Status
from app.domain.vlans import (
    VlanBackend,
    VlanFacts,
    l3_interface_name,
    no_vlan_can_exist,
    vlan_bridge_name,
)


def _vlan(obj: SegmentObject) -> tuple[VlanBackend, str, int]:
    """(backend, trunk, vid) of a VLAN object; InvalidInput for one that lacks them."""
    if obj.trunk is None or obj.vid is None or obj.backend is None:
        raise InvalidInput(f"VLAN {obj.name!r}: its trunk, VID or backend is unknown")
    try:
        return VlanBackend(obj.backend), obj.trunk, obj.vid
    except ValueError:
        raise InvalidInput(f"VLAN {obj.name!r}: unknown backend {obj.backend!r}") from None


@register
class VlanSegment(SegmentDriver):
    kind: ClassVar[str] = SegmentKind.VLAN.value
    label: ClassVar[str] = "VLAN"

    def unknown(self, ref: str, host: VlanFacts | None) -> DomainError | None:
        """On a host where no VLAN backend works, an unknown VLAN is the 409 naming the
        missing kernel features (no VLAN can exist there), not a 404 inviting a create."""
        return no_vlan_can_exist(host, ref)

    def join_refusal(self, obj: SegmentObject, joiner: Joiner) -> str | None:
        """A VLAN in error carries nothing its backend promised (on a trunk without working
        filtering a port would sit on the trunk untagged, on another tenant's segment):
        nothing joins it until it is active."""
        if obj.status != Status.ERROR.value:
            return None
        return (
            f"VLAN {obj.name!r} is in error ({obj.status_reason}); {joiner} cannot join it "
            "until it is active: remove the cause (it is retried at every full pass), or "
            "delete it and create one the host can carry"
        )

    def l3_interface(self, obj: SegmentObject) -> str:
        return l3_interface_name(*_vlan(obj))

    def master(self, obj: SegmentObject) -> str | None:
        backend, trunk, vid = _vlan(obj)
        if backend is VlanBackend.BRIDGE_PER_VLAN:
            return vlan_bridge_name(trunk, vid)
        return trunk

    def access_vid(self, obj: SegmentObject) -> int | None:
        backend, _, vid = _vlan(obj)
        return vid if backend is VlanBackend.VLAN_FILTERING else None

    def probe_bridge(self, obj: SegmentObject) -> str | None:
        backend, trunk, vid = _vlan(obj)
        return vlan_bridge_name(trunk, vid) if backend is VlanBackend.BRIDGE_PER_VLAN else None
