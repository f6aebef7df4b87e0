"""A virtio device's state as qemu reports it: QMP `x-query-virtio-status` (QEMU >= 7.2,
qapi/virtio.json; an `x-` command, for debugging, so every field is read defensively).

Pure (stdlib only): the API asks qemu and hands the answer here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

DRIVER_OK = "VIRTIO_CONFIG_S_DRIVER_OK"  # virtio 1.2, 2.1: the driver is set up and running


def backend_path(device_path: str) -> str:
    """The QOM path x-query-virtio-status wants: the device's virtio backend (e.g.
    /machine/peripheral/nic0/virtio-backend for virtio-net-pci nic0)."""
    return f"{device_path}/virtio-backend"


@dataclass(frozen=True)
class VirtioStatus:
    """`driver_ok`: the guest's driver has started the device; `vhost`: qemu's vhost backend
    runs its data path (meaningful only once started); `guest_features`: the feature bits
    the driver accepted (names such as VIRTIO_NET_F_MQ, VIRTIO_F_VERSION_1)."""

    driver_ok: bool
    vhost: bool
    guest_features: tuple[str, ...]


def _names(entries: object) -> list[str]:
    """Feature names from qemu's "NAME: description" strings."""
    if not isinstance(entries, list):
        return []
    return [entry.split(":", 1)[0].strip() for entry in entries if isinstance(entry, str)]


def parse_status(reply: object) -> VirtioStatus | None:
    """The status in an x-query-virtio-status answer; None when it is not one."""
    if not isinstance(reply, Mapping):
        return None
    statuses = reply.get("status", {})
    driver_ok = isinstance(statuses, Mapping) and DRIVER_OK in _names(statuses.get("statuses"))
    features = reply.get("guest-features", {})
    names: list[str] = []
    if isinstance(features, Mapping):
        names = _names(features.get("dev-features")) + _names(features.get("transports"))
    return VirtioStatus(
        driver_ok=driver_ok,
        vhost=reply.get("vhost-started") is True,
        guest_features=tuple(sorted(names)),
    )
