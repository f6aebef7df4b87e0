"""NIC hotplug's pure parts: which NICs a running VM can take (hotplug_refusal), the QMP
arguments a plug sends (netdev_add, device_add), qemu's device list read back
(peripheral_nics), and stable NIC indexes on the command line."""

from __future__ import annotations

from dataclasses import replace

from app.domain.nics import nic_driver
from app.domain.pcie import SPARE_ROOT_PORTS, free_root_port, port_of, root_ports
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


def test_only_pci_nics_on_tap_backends_of_pc_and_q35_are_hot_plugged() -> None:
    assert hotplug_refusal(_nic(0), Machine.PC) is None
    assert hotplug_refusal(_nic(0), Machine.Q35) is None  # on a spare PCIe root port
    assert hotplug_refusal(_nic(0, "tap"), Machine.PC) is None
    assert "user backend" in (hotplug_refusal(_nic(0, "user"), Machine.PC) or "")
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


def test_q35_nics_sit_on_root_ports_of_their_own_with_spares() -> None:
    """q35: each PCI NIC on its own pcie-root-port (a device on pcie.0 cannot be
    hot-unplugged), SPARE_ROOT_PORTS empty ones for NICs plugged later; pc: none."""
    nics = (_nic(0), replace(_nic(2, "tap"), model="e1000"))
    spec = VmSpec(
        id="v",
        name="v",
        machine=Machine.Q35,
        boot=BootSpec(kernel="/k"),
        nics=nics,
        nic_indexes=(0, 2),
    )
    argv = qemu_argv(spec, "qemu", Accelerator.TCG)
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]
    ports = [d for d in devices if d.startswith("pcie-root-port,")]
    assert ports == [
        f"pcie-root-port,id=rp{n},chassis={n + 1},io-reserve=0" for n in range(2 + SPARE_ROOT_PORTS)
    ]
    assert [d.rsplit(",", 1)[1] for d in devices if d.startswith(("virtio", "e1000"))] == [
        "bus=rp0",
        "bus=rp1",
    ]
    assert not [
        a
        for a in qemu_argv(replace(spec, machine=Machine.PC), "q", Accelerator.TCG)
        if a.startswith("pcie-root-port")
    ]
    assert device_qmp(5, _nic(5), "rp3")["bus"] == "rp3"


def test_the_free_root_port_is_read_from_qom() -> None:
    listing = [{"name": n, "type": "x"} for n in ("type", "rp0", "rp2", "nic0", "rp1", "rpx")]
    assert root_ports(listing) == ["rp0", "rp2", "rp1"]
    assert port_of("/machine/peripheral/rp0/rp0") == "rp0"
    assert port_of("/machine/q35/pcie.0") is None and port_of(None) is None
    assert free_root_port(["rp0", "rp2", "rp1"], {"rp0"}) == "rp1"
    assert free_root_port(["rp0"], {"rp0"}) is None
    assert free_root_port([], set()) is None  # a VM started before ports were made
