"""PCIe root ports for NIC hotplug on the q35 machine.

q35's root bus (pcie.0) takes no hotplug: a device there is an integrated endpoint. A device
behind a `pcie-root-port` is hot-plugged and hot-unplugged through PCIe native hotplug (the
guest's pciehp driver answers the slot's attention button; QEMU's docs/pcie.txt, "Hot-plug").
So on q35 each guest PCI NIC a VM starts with sits on a root port of its own, and
SPARE_ROOT_PORTS more wait empty for NICs added while it runs; at the VM's next start every
NIC gets its own port again and the spares are free. The pc machine needs none of this (ACPI
PCI hotplug on its root bus). Which port a device sits on is read from QOM (its `parent_bus`
link), not from query-pci, whose bridges list devices only once the guest's firmware numbered
the buses. Ports reserve no I/O window (`io-reserve=0`): 16 NICs' worth of
4 KiB windows would not fit the 64 KiB I/O space, and virtio/e1000 need none behind a port.
"""

from __future__ import annotations

from app.domain.errors import Conflict
from app.domain.vms import NIC_MODELS, Bus, Machine, VmSpec

SPARE_ROOT_PORTS = 4
PORT_PREFIX = "rp"


class NoFreeRootPort(Conflict):
    """Every root port of a q35 VM holds a device: the NIC waits for the VM's next start."""

    def __init__(self, index: int) -> None:
        super().__init__(
            f"NIC {index} waits for the VM's next start: no free PCIe root port (a q35 VM "
            f"starts with {SPARE_ROOT_PORTS} spare ones for NICs added while it runs; one is "
            "free again once a NIC is removed)"
        )


def port_id(number: int) -> str:
    """The qdev id of root port `number` (rp0, rp1, ...)."""
    return f"{PORT_PREFIX}{number}"


def nic_ports(spec: VmSpec) -> dict[int, str]:
    """NIC index -> the root port its guest device sits on at launch (q35 only; {} else):
    each NIC with an emulated PCI model gets the next port, in index order."""
    if spec.machine is not Machine.Q35:
        return {}
    pci = [i for i, nic in spec.indexed_nics() if NIC_MODELS.get(nic.model or "") is Bus.PCI]
    return {index: port_id(number) for number, index in enumerate(pci)}


def root_port_args(spec: VmSpec) -> list[str]:
    """The `-device pcie-root-port` options of a q35 VM: one per NIC (nic_ports) and
    SPARE_ROOT_PORTS empty ones; a distinct chassis number each (QEMU refuses two ports with
    the same chassis and slot)."""
    if spec.machine is not Machine.Q35:
        return []
    args: list[str] = []
    for number in range(len(nic_ports(spec)) + SPARE_ROOT_PORTS):
        port = f"pcie-root-port,id={port_id(number)},chassis={number + 1},io-reserve=0"
        args += ["-device", port]
    return args


def root_ports(listing: object) -> list[str]:
    """Our root ports (rp<n>) in a QMP `qom-list /machine/peripheral` answer."""
    items = listing if isinstance(listing, list) else []
    names = [item.get("name") for item in items if isinstance(item, dict)]
    return [n for n in names if isinstance(n, str) and _number(n) is not None]


def port_of(parent_bus: object) -> str | None:
    """The root port a device sits on, from its QOM `parent_bus` link (a bus path such as
    /machine/peripheral/rp1/rp1: the port's bus is named after it); None: not one of ours."""
    if not isinstance(parent_bus, str):
        return None
    parts = parent_bus.rstrip("/").split("/")
    return parts[-2] if len(parts) >= 2 and _number(parts[-2]) is not None else None


def free_root_port(ports: list[str], taken: set[str]) -> str | None:
    """The lowest-numbered port of `ports` not in `taken`; None when every one is taken (or
    none exists: a VM started before ports were made)."""
    free = sorted((n, p) for p in ports if p not in taken and (n := _number(p)) is not None)
    return free[0][1] if free else None


def _number(name: str) -> int | None:
    digits = name[len(PORT_PREFIX) :]
    if name.startswith(PORT_PREFIX) and digits.isascii() and digits.isdigit():
        return int(digits)
    return None
