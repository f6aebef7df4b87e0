"""The qemu command line for a VM spec, as an argv list (never a shell string).

Only the machine, its boot source and its NICs come from here; the process manager adds what
belongs to one run (QMP socket, pidfile, serial log, name, uuid, sandbox). Values inside a
QEMU option string are escaped the QEMU way (a comma is written twice), so no user-supplied
value can add an option.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from app.domain.nics import nic_driver
from app.domain.pcie import nic_ports, root_port_args
from app.domain.qemu_options import qemu_options, qemu_value
from app.domain.vms import Accelerator, Machine, NicSpec, VmSpec, boot_nic_index

__all__ = [
    "boot_args",
    "device_arg",
    "device_qmp",
    "netdev_arg",
    "qemu_argv",
    "qemu_options",
    "qemu_value",
]


def netdev_arg(
    index: int,
    nic: NicSpec,
    vhost_net: bool,
    fds: Sequence[int] | None = None,
    vhost_fds: Sequence[int] = (),
) -> str:
    """The NIC's `-netdev`, as its backend's driver writes it."""
    return nic_driver(nic.backend).netdev(f"net{index}", nic, vhost_net, fds, vhost_fds)


def device_arg(index: int, nic: NicSpec, boots: bool = False, bus: str | None = None) -> str:
    """The guest NIC. Multiqueue virtio needs MSI-X vectors: 2 per queue pair + 2. An MTU
    is virtio's `host_mtu` (validate_nic allows it on virtio-net-pci only). `boots`: the
    firmware boots from it first (`bootindex=0`: SeaBIOS runs its iPXE option ROM, PXE).
    `bus`: the q35 root port it sits on (app.domain.pcie); None: the machine's root bus."""
    multiqueue = nic.queues > 1
    assert nic.model is not None
    device = qemu_options(
        nic.model,
        netdev=f"net{index}",
        mac=nic.mac,
        id=f"nic{index}",
        mq="on" if multiqueue else None,
        vectors=2 * nic.queues + 2 if multiqueue else None,
        bootindex=0 if boots else None,
        bus=bus,
    )
    # properties spelled with an underscore (hw/net/virtio-net.c), unlike _options' keys
    extra = dict(nic.offloads.qemu_properties())
    if nic.mtu is not None:
        extra["host_mtu"] = str(nic.mtu)
    return ",".join([device, *(f"{key}={value}" for key, value in extra.items())])


def device_qmp(index: int, nic: NicSpec, bus: str | None = None) -> dict[str, object]:
    """QMP `device_add`'s arguments for the guest NIC of a running qemu: what device_arg
    writes on the command line, as typed values (qemu picks the first free slot of the PCI
    root bus, or of the q35 root port `bus`: no `addr`)."""
    assert nic.model is not None
    device: dict[str, object] = {
        "driver": nic.model,
        "id": f"nic{index}",
        "netdev": f"net{index}",
        "mac": nic.mac,
    }
    if bus is not None:
        device["bus"] = bus
    if nic.queues > 1:
        device.update(mq=True, vectors=2 * nic.queues + 2)
    if nic.mtu is not None:
        device["host_mtu"] = nic.mtu
    device.update({key: value == "on" for key, value in nic.offloads.qemu_properties().items()})
    return device


def boot_args(spec: VmSpec) -> list[str]:
    """The boot source's options; none for a network boot (its NIC's `bootindex` says it)."""
    boot = spec.boot
    if boot.network:
        return []
    if boot.kernel is not None:
        args = ["-kernel", boot.kernel]
        if boot.initrd:
            args += ["-initrd", boot.initrd]
        if boot.cmdline:
            args += ["-append", boot.cmdline]
        return args
    assert boot.disk is not None
    interface = "ide" if spec.machine is Machine.ISAPC else "virtio"
    return [
        "-drive",
        qemu_options(
            "format=raw",
            file=boot.disk,
            **{"if": interface},
            snapshot="on" if boot.snapshot else None,
        ),
    ]


def qemu_argv(
    spec: VmSpec,
    binary: str,
    accelerator: Accelerator,
    vhost_net: bool = False,
    tap_fds: Mapping[str, Sequence[int]] | None = None,
    vhost_fds: Mapping[str, Sequence[int]] | None = None,
) -> list[str]:
    """The argv for `spec` with the accelerator already resolved (never AUTO here).
    `tap_fds` maps a NIC id to the tap descriptors qemu inherits (else it opens by name),
    `vhost_fds` to its /dev/vhost-net descriptors (one per queue; else qemu opens it)."""
    if accelerator is Accelerator.AUTO:
        raise ValueError("resolve the accelerator first (resolve_accelerator)")
    # a firmware boot (disk, network): SeaBIOS's serial console (QEMU sets its
    # etc/sercon-port when graphics=off), so the firmware's, a boot loader's and iPXE's
    # screen text reach the VM's console log; a kernel boot prints there itself
    firmware_boot = spec.boot.kernel is None
    argv = [
        binary,
        "-machine",
        qemu_options(spec.machine.value, graphics="off" if firmware_boot else None),
        "-accel",
        accelerator.value,
        "-smp",
        str(spec.vcpus),
        "-m",
        str(spec.memory_mib),
    ]
    if accelerator is Accelerator.KVM:
        argv += ["-cpu", "host"]
    argv += boot_args(spec)
    argv += root_port_args(spec)
    ports = nic_ports(spec)
    boot_nic = boot_nic_index(spec) if spec.boot.network else None
    for index, nic in spec.indexed_nics():
        own = nic_driver(nic.backend).qemu_args(index, nic)
        if own is not None:  # a VF passed through: no netdev
            argv += own
            continue
        fds = (tap_fds or {}).get(nic.id)
        vhost = (vhost_fds or {}).get(nic.id, ())
        argv += ["-netdev", netdev_arg(index, nic, vhost_net, fds, vhost)]
        if nic.model is None:  # no guest NIC: the backend joins its hub
            argv += ["-netdev", f"hubport,id=hub{index},hubid={nic.hub},netdev=net{index}"]
        else:
            device = device_arg(index, nic, boots=index == boot_nic, bus=ports.get(index))
            argv += ["-device", device]
    return argv
