"""NIC hotplug's pure parts: which NICs a running VM can take (hotplug_refusal), the QMP
arguments a plug sends (netdev_add, device_add), qemu's device list read back
(peripheral_nics), and stable NIC indexes on the command line."""

from __future__ import annotations

from dataclasses import replace

from app.domain.nics import nic_driver
from app.domain.qemu_argv import device_qmp, qemu_argv
from app.domain.vms import (
    Accelerator,
    BootSpec,
    Machine,
    NicSpec,
    Vhost,
    VmSpec,
    hotplug_refusal,
    peripheral_nics,
)


def _nic(index: int, backend: str = "bridge", **extra: object) -> NicSpec:
    fields: dict[str, object] = {
        "id": f"n{index}",
        "model": "virtio-net-pci",
        "mac": f"52:54:00:00:00:0{index}",
        "backend": backend,
        "tap": f"kvtap-{index}" if backend != "user" else None,
        **extra,
    }
    return NicSpec(**fields)  # type: ignore[arg-type]


def test_only_pci_nics_on_tap_backends_of_the_pc_machine_are_hot_plugged() -> None:
    assert hotplug_refusal(_nic(0), Machine.PC) is None
    assert hotplug_refusal(_nic(0, "tap"), Machine.PC) is None
    assert "user backend" in (hotplug_refusal(_nic(0, "user"), Machine.PC) or "")
    assert "q35" in (hotplug_refusal(_nic(0), Machine.Q35) or "")
    assert "not a PCI device" in (hotplug_refusal(_nic(0, model="ne2k_isa"), Machine.PC) or "")
    assert "hub join" in (hotplug_refusal(_nic(0, model=None, hub=0), Machine.PC) or "")


def test_a_plug_names_the_passed_descriptors_and_the_nics_identity() -> None:
    nic = _nic(3, queues=2, mtu=9000, vhost=Vhost.OFF)
    netdev = nic_driver("bridge").netdev_qmp("net3", nic, True, ["net3q0", "net3q1"])
    assert netdev == {"type": "tap", "id": "net3", "fds": "net3q0:net3q1", "vhost": False}
    single = nic_driver("tap").netdev_qmp("net1", _nic(1, "tap"), True, ["net1q0"])
    assert single == {"type": "tap", "id": "net1", "fd": "net1q0", "vhost": True}  # auto
    # /dev/vhost-net's descriptors, passed by getfd as well (NetdevTapOptions vhostfd/vhostfds)
    auto = replace(nic, vhost=Vhost.AUTO)
    two = nic_driver("bridge").netdev_qmp("net3", auto, True, ["a", "b"], ["c", "d"])
    assert two == {"type": "tap", "id": "net3", "fds": "a:b", "vhostfds": "c:d", "vhost": True}
    one = nic_driver("tap").netdev_qmp("net1", _nic(1, "tap"), True, ["net1q0"], ["net1v0"])
    assert one == {"type": "tap", "id": "net1", "fd": "net1q0", "vhostfd": "net1v0", "vhost": True}
    off = nic_driver("bridge").netdev_qmp("net3", nic, True, ["a", "b"], ["c", "d"])
    assert "vhostfds" not in off and off["vhost"] is False
    assert device_qmp(3, nic) == {
        "driver": "virtio-net-pci",
        "id": "nic3",
        "netdev": "net3",
        "mac": "52:54:00:00:00:03",
        "mq": True,
        "vectors": 6,
        "host_mtu": 9000,
    }


def test_qemus_device_list_gives_the_guest_nic_indexes() -> None:
    listing = [
        {"name": "nic0", "type": "child<virtio-net-pci>"},
        {"name": "nic12", "type": "child<e1000>"},
        {"name": "nicx", "type": "child<e1000>"},
        {"name": "type", "type": "string"},
    ]
    assert peripheral_nics(listing) == {0, 12}
    assert peripheral_nics(None) == set()


def test_a_vm_with_a_gap_in_its_nic_indexes_keeps_them_on_the_command_line() -> None:
    spec = VmSpec(
        id="vm",
        name="vm",
        boot=BootSpec(disk="/d.img"),
        nics=(_nic(0), _nic(2)),
        nic_indexes=(0, 2),
    )
    argv = " ".join(qemu_argv(spec, "qemu", Accelerator.TCG))
    assert "id=nic0" in argv and "id=nic2" in argv and "netdev=net2" in argv
    assert "id=nic1" not in argv
