"""Virtual machines as the daemon understands them: specs, validation rules, MAC allocation.

Pure data and rules (stdlib only). The qemu command line is built from these specs in
app.domain.qemu_argv; the host layer only runs it. A NIC's backend is a driver
(app.domain.nics): the rules here are the ones every NIC shares, the driver adds its own.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from app.domain.errors import InvalidInput, naming
from app.domain.names import validate_mac
from app.domain.nics import NicDriver, backends_where, nic_driver, validate_hub
from app.domain.nics.spec import (
    HUBS,
    MTU_MODEL,
    MTU_RANGE,
    PORTS,
    QUEUES,
    VHOST_MODEL,
    Backend,
    NicSpec,
    PortForward,
    SocketNet,
    UserNet,
    Vhost,
    bounded,
)
from app.domain.vhost import NOT_PROBED, require_vhost_net

__all__ = [  # the NIC types live in app.domain.nics.spec; they are VM types too
    "MTU_MODEL",
    "MTU_RANGE",
    "PORTS",
    "QUEUES",
    "Backend",
    "NicSpec",
    "PortForward",
    "SocketNet",
    "UserNet",
    "Vhost",
]


class Machine(enum.StrEnum):
    PC = "pc"
    Q35 = "q35"
    ISAPC = "isapc"  # the how-to's -M isapc, for the ISA NE2000


class Accelerator(enum.StrEnum):
    AUTO = "auto"  # KVM when it really runs guests here, else TCG
    KVM = "kvm"
    TCG = "tcg"


class PowerState(enum.StrEnum):
    """What the user wants; the observed state is VmStatus."""

    RUNNING = "running"
    STOPPED = "stopped"


class VmStatus(enum.StrEnum):
    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    CRASHED = "crashed"
    ERROR = "error"
    DELETING = "deleting"


def vm_settled(status: VmStatus, generation: int, observed_generation: int) -> bool:
    """Settled: the worker applied the latest generation and is not in mid-transition."""
    in_flight = {VmStatus.PENDING, VmStatus.STARTING, VmStatus.STOPPING, VmStatus.DELETING}
    return status not in in_flight and observed_generation >= generation


class RestartPolicy(enum.StrEnum):
    NEVER = "never"
    ON_FAILURE = "on-failure"
    ALWAYS = "always"


class Bus(enum.StrEnum):
    PCI = "PCI"
    ISA = "ISA"


NIC_MODELS: dict[str, Bus] = {
    "virtio-net-pci": Bus.PCI,
    "e1000": Bus.PCI,
    "rtl8139": Bus.PCI,
    "ne2k_pci": Bus.PCI,
    "pcnet": Bus.PCI,
    "ne2k_isa": Bus.ISA,
}


QEMU_DEFAULT_MAC = "52:54:00:12:34:56"  # what qemu uses when told nothing: never handed out
MAC_PREFIX = "52:54:00"
MEMORY_MIB = (16, 1 << 20)
VCPUS = (1, 256)


@dataclass(frozen=True)
class BootSpec:
    """One boot source: a kernel (with optional initrd and cmdline), a raw disk image, or the
    network (`network`: PXE from the boot NIC's iPXE option ROM, see boot_nic_index)."""

    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    disk: str | None = None
    snapshot: bool = False
    network: bool = False


@dataclass(frozen=True)
class VmSpec:
    id: str
    name: str
    vcpus: int = 1
    memory_mib: int = 256
    machine: Machine = Machine.PC
    accelerator: Accelerator = Accelerator.AUTO
    boot: BootSpec = field(default_factory=BootSpec)
    nics: tuple[NicSpec, ...] = ()
    # each NIC's stable index (qemu's ids nic<i> and net<i>: a NIC removed from a running VM
    # leaves a gap, never renumbers the others); () means 0, 1, ... in order
    nic_indexes: tuple[int, ...] = ()

    def indexed_nics(self) -> list[tuple[int, NicSpec]]:
        """(index, NIC) in order."""
        if not self.nic_indexes:
            return list(enumerate(self.nics))
        return list(zip(self.nic_indexes, self.nics, strict=True))


# ---- validation ----------------------------------------------------------------------------


def validate_nic_model(model: str, machine: Machine, available: Iterable[str]) -> None:
    """A model qemu offers here, on a bus the machine has (ne2k_isa only on isapc, and isapc
    has no PCI bus)."""
    offered = set(available)
    if model not in NIC_MODELS:
        raise InvalidInput(
            f"NIC model {model!r} is not supported; choose one of {', '.join(sorted(NIC_MODELS))}"
        )
    if model not in offered:
        raise InvalidInput(
            f"this qemu does not offer NIC model {model!r}; it offers "
            f"{', '.join(sorted(m for m in offered if m in NIC_MODELS)) or 'none of ours'}"
        )
    bus = NIC_MODELS[model]
    if machine is Machine.ISAPC and bus is Bus.PCI:
        raise InvalidInput(f"the isapc machine has no PCI bus: {model} cannot be used there")
    if bus is Bus.ISA and machine is not Machine.ISAPC:
        raise InvalidInput(f"{model} is an ISA card: it needs the isapc machine")


def validate_passthrough_bus(backend: str, machine: Machine) -> None:
    """A backend whose guest device is passed through (the sriov backend's VF: vfio-pci, a
    PCI device) needs a PCI bus: 422 on isapc, as e1000 there. The services ask this before
    the backend claims anything (a VF), so the refusal is the input's, not the host's."""
    driver = nic_driver(backend)
    if driver.device_model is not None and machine is Machine.ISAPC:
        raise InvalidInput(
            f"the isapc machine has no PCI bus: the {backend} backend's "
            f"{driver.device_model} device cannot be used there"
        )


def validate_nic(
    nic: NicSpec, machine: Machine, available: Iterable[str], vhost_missing: str | None
) -> None:
    """The rules every NIC shares, then its backend driver's own (app.domain.nics).
    `vhost_missing`: why /dev/vhost-net does not work here (None: it does)."""
    driver = nic_driver(nic.backend)
    validate_hub(nic, driver)
    if driver.device_model is not None:  # a device passed through: a PCI one (vfio-pci)
        if nic.model != driver.device_model:
            raise InvalidInput(
                f"the {nic.backend} backend's guest device is {driver.device_model}, "
                f"not {nic.model!r}"
            )
        validate_passthrough_bus(nic.backend, machine)
    elif nic.model is not None:
        validate_nic_model(nic.model, machine, available)
    validate_mac(nic.mac)
    bounded("queues", nic.queues, QUEUES)
    if nic.queues > 1 and (nic.model != "virtio-net-pci" or not driver.multiqueue):
        raise InvalidInput(
            f"multiqueue needs the virtio-net-pci model on a {backends_where('multiqueue')} backend"
        )
    _validate_mtu(nic, driver)
    _validate_offloads(nic, driver)
    driver.validate(nic)
    if nic.vhost is Vhost.ON:
        _validate_vhost(nic, driver, vhost_missing)
    if nic.hub is not None and not HUBS[0] <= nic.hub <= HUBS[1]:
        raise InvalidInput(f"a hub number is between {HUBS[0]} and {HUBS[1]}")


def nic_label(spec: VmSpec, position: int) -> str:
    """How messages name the NIC at `position` of `spec.nics`: as the request sent it
    (`nics[1]`) for a VM being created, by its lifelong index (`NIC 3`, as in
    /v1/vms/{id}/nics/{index}) for a stored one."""
    if not spec.nic_indexes:
        return f"nics[{position}]"
    return f"NIC {spec.nic_indexes[position]}"


def _validate_vhost(nic: NicSpec, driver: NicDriver, missing: str | None) -> None:
    """vhost=on: 422 where vhost-net cannot carry this NIC whatever the host, then 409 where
    this host's /dev/vhost-net does not work (app.domain.vhost)."""
    if not driver.vhost:
        raise InvalidInput(
            f"vhost-net moves a tap's packets, and the {nic.backend} backend has no tap "
            f"(vhost=on needs a {backends_where('vhost')} backend)"
        )
    if nic.model != VHOST_MODEL:
        raise InvalidInput(f"vhost-net only accelerates {VHOST_MODEL}, not {nic.model}")
    require_vhost_net(missing)


def _validate_offloads(nic: NicSpec, driver: NicDriver) -> None:
    """Offloads are virtio-net's, negotiated over a virtio-net header: only a virtio-net-pci
    NIC on a backend whose tap carries one (app.domain.nics.offloads) has them."""
    if nic.offloads.default:
        return
    nic.offloads.resolved()
    if nic.model != MTU_MODEL or not driver.vnet_hdr:
        raise InvalidInput(
            f"offloads need the {MTU_MODEL} model on a {backends_where('vnet_hdr')} backend "
            "(a tap with a virtio-net header); leave offloads out for this NIC"
        )


def _validate_mtu(nic: NicSpec, driver: NicDriver) -> None:
    """A NIC's MTU reaches the guest only through virtio's host_mtu property (the device
    offers VIRTIO_NET_F_MTU and the guest driver takes the value as its MTU; the other
    emulated NICs have no way to tell the guest), and only a tap-like backend carries it
    (QEMU's user networking keeps its own fixed MTU)."""
    if nic.mtu is None:
        return
    bounded("mtu", nic.mtu, MTU_RANGE)
    if nic.model != MTU_MODEL:
        what = "a backend without a guest NIC" if nic.model is None else nic.model
        raise InvalidInput(
            f"mtu needs the {MTU_MODEL} model, which advertises it to the guest (QEMU's "
            f"host_mtu); {what} cannot carry it: leave mtu out and set it in the guest"
        )
    if driver.mtu_refused is not None:
        raise InvalidInput(driver.mtu_refused)


def validate_vm(
    spec: VmSpec, available_models: Iterable[str], vhost_missing: str | None = NOT_PROBED
) -> None:
    """Everything about a VM that can be refused before qemu ever runs. `vhost_missing`:
    why this host's /dev/vhost-net does not work (None: it does; app.domain.vhost)."""
    bounded("vcpus", spec.vcpus, VCPUS)
    bounded("memory_mib", spec.memory_mib, MEMORY_MIB)
    boot = spec.boot
    sources = [boot.kernel is not None, boot.disk is not None, boot.network]
    if sources.count(True) != 1:
        raise InvalidInput(
            "boot from exactly one of a kernel (with optional initrd), a disk image or the "
            "network (`network`: true)"
        )
    if boot.snapshot and boot.disk is None:
        raise InvalidInput("snapshot applies to a disk image (qemu's -drive snapshot=on)")
    if boot.network:
        _can_boot_from_the_network(spec)
    if boot.kernel is None and (boot.initrd is not None or boot.cmdline is not None):
        raise InvalidInput("initrd and cmdline need a kernel")
    for what, path in (("kernel", boot.kernel), ("initrd", boot.initrd), ("disk", boot.disk)):
        if path is not None and not path.startswith("/"):
            raise InvalidInput(
                f"{what} must be an absolute path (qemu does not run in your "
                f"directory), not {path!r}"
            )
    models = list(available_models)
    macs: set[str] = set()
    taps: dict[str, int] = {}
    for index, nic in enumerate(spec.nics):
        with naming(nic_label(spec, index)):
            validate_nic(nic, spec.machine, models, vhost_missing)
        if nic.mac in macs:
            raise InvalidInput(f"MAC {nic.mac} is used twice in this VM")
        macs.add(nic.mac)
        if nic.tap is not None:
            _one_nic_per_tap(taps, nic.tap, index)


def _can_boot_from_the_network(spec: VmSpec) -> None:
    if spec.machine is Machine.ISAPC:
        raise InvalidInput(
            "the isapc machine cannot boot from the network: it has no PCI bus for a NIC "
            "with an iPXE option ROM"
        )
    if boot_nic_index(spec) is None:
        models = ", ".join(m for m, bus in NIC_MODELS.items() if bus is Bus.PCI)
        raise InvalidInput(
            f"boot from the network needs a NIC whose model has an iPXE option ROM ({models}): "
            "that ROM does the PXE boot"
        )


def boot_nic_index(spec: VmSpec) -> int | None:
    """The index of the NIC a network boot (`boot.network`) boots from: the first NIC with an
    emulated PCI model, each of which QEMU gives an iPXE option ROM (efi-<model>.rom of the
    ipxe-qemu package); None when there is none (a VF passed through, an ISA card, a hub
    join)."""
    for index, nic in spec.indexed_nics():
        if nic.model is not None and NIC_MODELS.get(nic.model) is Bus.PCI:
            return index
    return None


def _one_nic_per_tap(taps: dict[str, int], tap: str, index: int) -> None:
    """A tap carries one NIC: qemu opens it once, a second open fails with EBUSY."""
    first = taps.setdefault(tap, index)
    if first != index:
        raise InvalidInput(
            f"nics[{first}] and nics[{index}] both use tap {tap!r}; a tap carries one NIC"
        )


def hotplug_refusal(nic: NicSpec, machine: Machine) -> str | None:
    """Why `nic` cannot be added to (or removed from) a running VM of `machine`; None when it
    can: a guest NIC on a PCI bus the machine hot-plugs (the pc machine's root bus, through
    ACPI PCI hotplug; q35's PCIe root ports, app.domain.pcie: the guest must release a device
    before it goes) on a backend whose netdev takes passed descriptors. Any NIC can be added
    to a stopped VM."""
    driver = nic_driver(nic.backend)
    if not driver.hotplug:
        hot = backends_where("hotplug")
        return f"the {nic.backend} backend cannot be plugged into a running qemu (only {hot})"
    if nic.model is None:
        return "a hub join (model null) is no PCI device qemu can hot-plug"
    if NIC_MODELS.get(nic.model) is not Bus.PCI:
        return f"NIC model {nic.model} is not a PCI device qemu can hot-plug"
    if machine not in (Machine.PC, Machine.Q35):
        return f"the {machine.value} machine has no hot-pluggable PCI slot"
    return None


PERIPHERALS = "/machine/peripheral"  # where qemu's QOM keeps devices added with an id


def peripheral_nics(listing: object) -> set[int]:
    """The indexes of the guest NIC devices (`nic<i>`) in a QMP `qom-list` answer of
    /machine/peripheral (a list of {"name": ..., "type": ...})."""
    found: set[int] = set()
    for item in listing if isinstance(listing, list) else []:
        name = item.get("name") if isinstance(item, dict) else None
        if isinstance(name, str) and name.startswith("nic") and name[3:].isdigit():
            found.add(int(name[3:]))
    return found


def resolve_accelerator(wanted: Accelerator, kvm_runs_guests: bool | None) -> Accelerator:
    """auto: KVM only where it was seen to boot a guest; explicit kvm where it cannot is an
    error, never a silent fallback."""
    if wanted is Accelerator.AUTO:
        return Accelerator.KVM if kvm_runs_guests else Accelerator.TCG
    if wanted is Accelerator.KVM and kvm_runs_guests is False:
        raise InvalidInput("KVM does not run guests on this host (probed); use tcg or auto")
    return wanted


# ---- MAC addresses -------------------------------------------------------------------------


def allocate_mac(taken: Iterable[str], rand: Callable[[int], int] | None = None) -> str:
    """A free locally administered-style QEMU MAC (52:54:00:xx:xx:xx), never QEMU's default.
    `rand(bits)` is injectable for tests; the database's unique index is the final word."""
    draw = rand or random.getrandbits
    used = set(taken) | {QEMU_DEFAULT_MAC}
    for _ in range(1000):
        value = draw(24)
        mac = f"{MAC_PREFIX}:{value >> 16 & 0xFF:02x}:{value >> 8 & 0xFF:02x}:{value & 0xFF:02x}"
        if mac not in used:
            return mac
    raise InvalidInput("could not find a free MAC address")
