"""The `bridge` backend: a tap the daemon makes for the NIC (named after the VM and the NIC's
position), which the VM worker creates owned by qemu's user and attaches to one of our
bridges (the how-to's tap1 and tap2 on br0).

On a VLAN (issue 10): the NIC may be an access port of one VLAN of its bridge (`vlan`; the
bridge may then be omitted: it is the VLAN's trunk), or a trunk NIC that hands the guest
several of the bridge's VLANs tagged plus an optional native one untagged (`vlan_tagged`,
`native_vlan`), which only a VLAN-filtering trunk can carry (`trunk_vlans`). Where the tap
goes follows from the VLAN's backend (app.db.repositories.port_vlans): the per-VLAN bridge
for bridge_per_vlan, the trunk itself (with per-port membership) for vlan_filtering.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any, ClassVar

from app.domain.errors import InvalidInput
from app.domain.nics.registry import HostLink, NicClaims, register
from app.domain.nics.spec import NicSpec
from app.domain.nics.tap import TapNetdev
from app.domain.vlans import TrunkVlans, VlanBackend, validate_trunk_nic


def trunk_vlans(
    tagged: Iterable[int],
    native: int | None,
    trunk: str,
    on_trunk: Mapping[int, VlanBackend],
) -> TrunkVlans:
    """A trunk NIC's VLANs on bridge `trunk`, whose live VLANs are `on_trunk` (VID -> the
    trunk's backend). Every VID, the native one too, must be a VLAN of that trunk, and the
    trunk must filter VLANs (validate_trunk_nic says why a per-VLAN bridge cannot)."""
    tagged = list(tagged)
    if not on_trunk:
        raise InvalidInput(
            f"bridge {trunk!r} carries no VLAN: create the VLANs first (POST /v1/vlans with "
            f"trunk {trunk!r}), then a trunk NIC can carry them"
        )
    backend = next(iter(on_trunk.values()))  # one trunk, one backend (app.domain.vlans)
    vlans = validate_trunk_nic(tagged, native, backend)
    wanted = [*vlans.tagged, *([] if native is None else [native])]
    missing = [vid for vid in wanted if vid not in on_trunk]
    if missing:
        carried = ", ".join(str(v) for v in sorted(on_trunk))
        raise InvalidInput(
            f"VLAN {missing[0]} is not on bridge {trunk!r} (it carries {carried}); a trunk "
            "NIC carries VLANs of its own bridge only"
        )
    return vlans


@register
class BridgeDriver(TapNetdev):
    name: ClassVar[str] = "bridge"
    host_link: ClassVar[HostLink] = HostLink.VM_TAP
    option: ClassVar[str | None] = "bridge"
    fields: ClassVar[tuple[str, ...]] = ("ipv4",)

    def admit(self, nic: NicSpec, request: Mapping[str, Any], claims: NicClaims) -> NicSpec:
        bridge = request.get("bridge")
        tagged = request.get("vlan_tagged")
        trunk = None if tagged is None else (list(tagged), request.get("native_vlan"))
        tap = claims.vm_tap(None if bridge is None else str(bridge), request.get("vlan"), trunk)
        return replace(nic, tap=tap)
