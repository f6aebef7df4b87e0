"""A virtio NIC's offloads: what the NIC asks of qemu, and what the guest negotiated.

Three switches, each None (qemu's default: on where the backend carries a virtio-net header,
i.e. a kernel tap), True or False:
- `checksum`: partial checksums both ways (virtio VIRTIO_NET_F_CSUM and _GUEST_CSUM; qemu's
  virtio-net-pci properties `csum` and `guest_csum`);
- `tso`: segmentation offload of what the guest sends: the guest hands over segments of
  up to 64 KiB and the host cuts them (VIRTIO_NET_F_HOST_TSO4/6/ECN/UFO; `host_tso4`,
  `host_tso6`, `host_ecn`, `host_ufo`);
- `gso`: large receive towards the guest: the host may hand the guest GSO packets unsegmented
  (VIRTIO_NET_F_GUEST_TSO4/6/ECN/UFO; `guest_tso4`, `guest_tso6`, `guest_ecn`, `guest_ufo`).
  qemu applies what the guest accepted of these to the tap (TUNSETOFFLOAD TUN_F_CSUM,
  TUN_F_TSO4/6, TUN_F_TSO_ECN, TUN_F_UFO), so the tap's own offloads follow.

The virtio spec (1.2, 5.1.3.1 "Feature bit requirements") makes segmentation need checksum
offload: HOST_TSO* and HOST_UFO require CSUM, GUEST_TSO* and GUEST_UFO require GUEST_CSUM.
So checksum off turns the other two off, and asking for either on with checksum off is
refused.

Pure (stdlib only).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from app.domain.errors import InvalidInput

# qemu's virtio-net properties per switch (hw/net/virtio-net.c, virtio_net_properties)
PROPERTIES: dict[str, tuple[str, ...]] = {
    "checksum": ("csum", "guest_csum"),
    "tso": ("host_tso4", "host_tso6", "host_ecn", "host_ufo"),
    "gso": ("guest_tso4", "guest_tso6", "guest_ecn", "guest_ufo"),
}
# the feature bits (virtio 1.2, 5.1.3) that show a switch negotiated: all of them accepted
FEATURES: dict[str, tuple[str, ...]] = {
    "checksum": ("VIRTIO_NET_F_CSUM", "VIRTIO_NET_F_GUEST_CSUM"),
    "tso": ("VIRTIO_NET_F_HOST_TSO4", "VIRTIO_NET_F_HOST_TSO6"),
    "gso": ("VIRTIO_NET_F_GUEST_TSO4", "VIRTIO_NET_F_GUEST_TSO6"),
}
SWITCHES = tuple(PROPERTIES)


@dataclass(frozen=True)
class Offloads:
    """What a NIC asks for; None: qemu's default."""

    checksum: bool | None = None
    tso: bool | None = None
    gso: bool | None = None

    @property
    def default(self) -> bool:
        return all(getattr(self, name) is None for name in SWITCHES)

    def resolved(self) -> Offloads:
        """Checksum off turns segmentation off too (5.1.3.1); asking for segmentation with
        checksum off is InvalidInput."""
        if self.checksum is not False:
            return self
        asked = [name for name in ("tso", "gso") if getattr(self, name)]
        if asked:
            raise InvalidInput(
                f"offloads: {asked[0]} needs checksum offload (virtio 1.2, 5.1.3.1: segmentation "
                "requires checksum offload); leave checksum on or turn both off"
            )
        return Offloads(checksum=False, tso=False, gso=False)

    def qemu_properties(self) -> dict[str, str]:
        """The virtio-net-pci properties to set ("on"/"off"); none for a default switch."""
        properties: dict[str, str] = {}
        for name in SWITCHES:
            value = getattr(self.resolved(), name)
            if value is not None:
                properties.update(dict.fromkeys(PROPERTIES[name], "on" if value else "off"))
        return properties


def negotiated(features: Iterable[str]) -> dict[str, bool]:
    """Which switches the guest's accepted feature bits (names such as VIRTIO_NET_F_CSUM)
    show on: a switch is on when all its bits are there."""
    accepted = set(features)
    return {name: all(bit in accepted for bit in FEATURES[name]) for name in SWITCHES}
