"""A virtio NIC's offloads (app.domain.nics.offloads): what a request resolves to, the qemu
properties on the command line and in device_add, who may ask for them, and what the guest
negotiated read from qemu's x-query-virtio-status (app.domain.virtio)."""

from __future__ import annotations

import pytest

from app.domain.errors import InvalidInput
from app.domain.nics.offloads import Offloads, negotiated
from app.domain.qemu_argv import device_arg, device_qmp
from app.domain.virtio import parse_status
from app.domain.vms import Machine, NicSpec, validate_nic

MODELS = ["virtio-net-pci", "e1000"]


def _nic(backend: str = "bridge", model: str = "virtio-net-pci", **offloads: bool) -> NicSpec:
    return NicSpec(
        id="n0",
        model=model,
        mac="52:54:00:00:00:01",
        backend=backend,
        tap="kvtap-0" if backend in ("bridge", "tap") else None,
        offloads=Offloads(**offloads),
    )


def test_checksum_off_turns_segmentation_off_and_segmentation_needs_checksum() -> None:
    assert Offloads(checksum=False).resolved() == Offloads(False, False, False)
    assert Offloads(tso=False).resolved() == Offloads(None, False, None)
    with pytest.raises(InvalidInput, match=r"tso needs checksum offload.*5\.1\.3\.1"):
        Offloads(checksum=False, tso=True).resolved()
    with pytest.raises(InvalidInput, match="gso needs checksum offload"):
        Offloads(checksum=False, gso=True).resolved()


def test_properties_on_the_command_line_and_in_device_add() -> None:
    assert device_arg(0, _nic()) == "virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01,id=nic0"
    argv = device_arg(0, _nic(checksum=False))
    assert argv.endswith(
        ",csum=off,guest_csum=off,host_tso4=off,host_tso6=off,host_ecn=off,host_ufo=off,"
        "guest_tso4=off,guest_tso6=off,guest_ecn=off,guest_ufo=off"
    )
    assert device_arg(0, _nic(gso=False)).endswith(
        ",guest_tso4=off,guest_tso6=off,guest_ecn=off,guest_ufo=off"
    )
    qmp = device_qmp(0, _nic(tso=False, checksum=True))
    assert qmp["csum"] is True and qmp["guest_csum"] is True and qmp["host_tso4"] is False
    assert "guest_tso4" not in qmp


def test_only_virtio_nics_with_a_vnet_header_take_offloads() -> None:
    validate_nic(_nic(checksum=False), Machine.PC, MODELS, vhost_missing="not probed")
    validate_nic(_nic("tap", tso=False), Machine.PC, MODELS, vhost_missing="not probed")
    with pytest.raises(InvalidInput, match="offloads need the virtio-net-pci model"):
        validate_nic(_nic(model="e1000", tso=False), Machine.PC, MODELS, vhost_missing="not probed")
    with pytest.raises(InvalidInput, match=r"offloads need .* backend"):
        validate_nic(_nic("user", checksum=True), Machine.PC, MODELS, vhost_missing="not probed")
    validate_nic(_nic("user"), Machine.PC, MODELS, vhost_missing="not probed")  # all default: fine


REPLY = {
    "status": {
        "statuses": [
            "VIRTIO_CONFIG_S_ACKNOWLEDGE: Valid virtio device found",
            "VIRTIO_CONFIG_S_DRIVER: Guest OS compatible with device",
            "VIRTIO_CONFIG_S_FEATURES_OK: Feature negotiation complete",
            "VIRTIO_CONFIG_S_DRIVER_OK: Driver setup and ready",
        ]
    },
    "guest-features": {
        "dev-features": [
            "VIRTIO_NET_F_GUEST_TSO4: Driver can receive TSOv4",
            "VIRTIO_NET_F_GUEST_TSO6: Driver can receive TSOv6",
            "VIRTIO_NET_F_CSUM: Device handling packets with partial checksum supported",
            "VIRTIO_NET_F_GUEST_CSUM: Driver handling packets with partial checksum supported",
            "VIRTIO_NET_F_MQ: Multiqueue with automatic receive steering supported",
        ],
        "transports": ["VIRTIO_F_VERSION_1: Device compliant for v1 spec (legacy)"],
    },
    "vhost-started": True,
}


def test_the_guests_negotiation_as_qemu_reports_it() -> None:
    status = parse_status(REPLY)
    assert status is not None and status.driver_ok and status.vhost
    assert "VIRTIO_NET_F_MQ" in status.guest_features
    assert "VIRTIO_F_VERSION_1" in status.guest_features
    assert negotiated(status.guest_features) == {"checksum": True, "tso": False, "gso": True}
    before = parse_status({"status": {"statuses": []}, "vhost-started": False})
    assert before is not None and not before.driver_ok and before.guest_features == ()
    assert parse_status(["not", "a", "status"]) is None
    odd = parse_status({"status": "?", "guest-features": {"dev-features": [3, None]}})
    assert odd is not None and odd.guest_features == () and not odd.vhost
