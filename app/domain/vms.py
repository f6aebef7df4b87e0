"""Virtual machines as the daemon understands them: specs, validation rules, MAC allocation.

Pure data and rules (stdlib only). The qemu command line is built from these specs in
app.domain.qemu_argv; the host layer only runs it.
"""

from __future__ import annotations

import enum
import ipaddress
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from app.domain.errors import InvalidInput
from app.domain.names import validate_link_name, validate_mac


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


class Backend(enum.StrEnum):
    BRIDGE = "bridge"  # a tap the daemon makes, attached to one of our bridges
    TAP = "tap"  # one of our tap resources
    USER = "user"  # QEMU user networking (slirp)
    SOCKET = "socket"  # VM-to-VM over a loopback TCP socket, or multicast
    HUB = "hub"  # a QEMU-internal hub (the old -net nic,vlan=N)


class Vhost(enum.StrEnum):
    AUTO = "auto"
    ON = "on"
    OFF = "off"


QEMU_DEFAULT_MAC = "52:54:00:12:34:56"  # what qemu uses when told nothing: never handed out
MAC_PREFIX = "52:54:00"
MEMORY_MIB = (16, 1 << 20)
VCPUS = (1, 256)
QUEUES = (1, 16)
PORTS = (1, 65535)
MTU_RANGE = (68, 65521)  # ETH_MIN_MTU to the largest MTU a tap accepts


@dataclass(frozen=True)
class PortForward:
    """The how-to's `-redir tcp:5555::22`: host_address:host_port -> guest_port."""

    protocol: str  # "tcp" or "udp"
    host_port: int
    guest_port: int
    host_address: str = "127.0.0.1"
    guest_address: str | None = None  # default: the guest's DHCP address

    @property
    def claim(self) -> tuple[str, str, int]:
        return (self.protocol, self.host_address, self.host_port)


@dataclass(frozen=True)
class UserNet:
    network: str = "10.0.2.0/24"
    host: str = "10.0.2.2"
    dns: str = "10.0.2.3"
    restrict: bool = False
    forwards: tuple[PortForward, ...] = ()


@dataclass(frozen=True)
class SocketNet:
    """`listen`/`connect` on a loopback TCP port, or `mcast` on a group address:port."""

    mode: str  # "listen", "connect" or "mcast"
    port: int
    address: str = "127.0.0.1"


@dataclass(frozen=True)
class NicSpec:
    """A guest NIC on a backend; or, with no model, a backend that only joins hub `hub`
    (the how-to's `-net tap -net socket` on one vlan: QEMU's hubport with netdev=)."""

    id: str
    model: str | None
    mac: str
    backend: Backend
    tap: str | None = None  # the kernel tap (bridge and tap backends)
    user: UserNet | None = None
    socket: SocketNet | None = None
    hub: int | None = None
    queues: int = 1
    vhost: Vhost = Vhost.AUTO
    link_up: bool = True
    mtu: int | None = None  # virtio's host_mtu; the tap's MTU on the bridge and tap backends


@dataclass(frozen=True)
class BootSpec:
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    disk: str | None = None
    snapshot: bool = False


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


# ---- validation ----------------------------------------------------------------------------


def _bounded(what: str, value: int, bounds: tuple[int, int]) -> None:
    low, high = bounds
    if isinstance(value, bool) or not low <= value <= high:
        raise InvalidInput(f"{what} must be between {low} and {high} (got {value})")


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


def _validate_hub_join(nic: NicSpec) -> None:
    if nic.model is None:
        if nic.backend is Backend.HUB or nic.hub is None:
            raise InvalidInput(
                "a backend without a guest NIC (model null) joins a hub: give `hub` and a "
                "bridge, tap, user or socket backend"
            )
        if nic.queues > 1 or nic.vhost is Vhost.ON:
            raise InvalidInput("queues and vhost belong to a guest NIC, not to a hub join")
    elif nic.hub is not None and nic.backend is not Backend.HUB:
        raise InvalidInput("`hub` on a NIC with a model needs the hub backend")


def validate_nic(nic: NicSpec, machine: Machine, available: Iterable[str], vhost_net: bool) -> None:
    _validate_hub_join(nic)
    if nic.model is not None:
        validate_nic_model(nic.model, machine, available)
    validate_mac(nic.mac)
    _bounded("queues", nic.queues, QUEUES)
    if nic.queues > 1 and (nic.model != "virtio-net-pci" or nic.backend not in _TAP_BACKENDS):
        raise InvalidInput("multiqueue needs the virtio-net-pci model on a bridge or tap backend")
    _validate_mtu(nic)
    if nic.vhost is Vhost.ON and not vhost_net:
        raise InvalidInput("vhost=on needs /dev/vhost-net, which this host does not have")
    if nic.vhost is Vhost.ON and nic.model != "virtio-net-pci":
        raise InvalidInput("vhost-net only accelerates virtio-net-pci")
    if nic.backend in _TAP_BACKENDS:
        if nic.tap is None:
            raise InvalidInput(f"NIC {nic.id}: the {nic.backend} backend needs a tap")
        validate_link_name(nic.tap)
    elif nic.backend is Backend.USER:
        _validate_user(nic.user or UserNet())
    elif nic.backend is Backend.SOCKET:
        _validate_socket(nic.socket)
    if nic.hub is not None and not 0 <= nic.hub <= 1024:
        raise InvalidInput("a hub number is between 0 and 1024")
    if nic.backend is Backend.HUB and nic.hub is None:
        raise InvalidInput("a hub NIC needs a hub number between 0 and 1024")


_TAP_BACKENDS = frozenset({Backend.BRIDGE, Backend.TAP})

MTU_MODEL = "virtio-net-pci"


def _validate_mtu(nic: NicSpec) -> None:
    """A NIC's MTU reaches the guest only through virtio's host_mtu property (the device
    offers VIRTIO_NET_F_MTU and the guest driver takes the value as its MTU; the other
    emulated NICs have no way to tell the guest), and only a tap-like backend carries it
    (QEMU's user networking keeps its own fixed MTU)."""
    if nic.mtu is None:
        return
    _bounded("mtu", nic.mtu, MTU_RANGE)
    if nic.model != MTU_MODEL:
        what = "a backend without a guest NIC" if nic.model is None else nic.model
        raise InvalidInput(
            f"mtu needs the {MTU_MODEL} model, which advertises it to the guest (QEMU's "
            f"host_mtu); {what} cannot carry it: leave mtu out and set it in the guest"
        )
    if nic.backend is Backend.USER:
        raise InvalidInput(
            "mtu cannot be set on the user backend: QEMU's user networking (slirp) keeps its "
            "own fixed MTU"
        )


def _validate_user(user: UserNet) -> None:
    try:
        network = ipaddress.IPv4Network(user.network, strict=True)
        addresses = [ipaddress.IPv4Address(user.host), ipaddress.IPv4Address(user.dns)]
    except ValueError as exc:
        raise InvalidInput(f"user networking: {exc}") from None
    for address in addresses:
        if address not in network:
            raise InvalidInput(f"user networking: {address} is outside {network}")
    seen: set[tuple[str, str, int]] = set()
    for forward in user.forwards:
        if forward.protocol not in ("tcp", "udp"):
            raise InvalidInput(
                f"port forward protocol must be tcp or udp, not {forward.protocol!r}"
            )
        _bounded("host_port", forward.host_port, PORTS)
        _bounded("guest_port", forward.guest_port, PORTS)
        try:
            ipaddress.IPv4Address(forward.host_address)
        except ValueError:
            raise InvalidInput(f"host_address {forward.host_address!r} is not IPv4") from None
        if forward.claim in seen:
            raise InvalidInput(f"port forward {forward.claim} is listed twice")
        seen.add(forward.claim)


def _validate_socket(socket: SocketNet | None) -> None:
    if socket is None or socket.mode not in ("listen", "connect", "mcast"):
        raise InvalidInput("a socket NIC needs mode listen, connect or mcast")
    _bounded("socket port", socket.port, PORTS)
    try:
        address = ipaddress.IPv4Address(socket.address)
    except ValueError:
        raise InvalidInput(f"socket address {socket.address!r} is not IPv4") from None
    if socket.mode == "mcast" and not address.is_multicast:
        raise InvalidInput(f"mcast needs a multicast group address, not {address}")
    if socket.mode != "mcast" and not address.is_loopback:
        raise InvalidInput("socket NICs listen and connect on loopback addresses only")


def validate_vm(spec: VmSpec, available_models: Iterable[str], vhost_net: bool = False) -> None:
    """Everything about a VM that can be refused before qemu ever runs."""
    _bounded("vcpus", spec.vcpus, VCPUS)
    _bounded("memory_mib", spec.memory_mib, MEMORY_MIB)
    boot = spec.boot
    if (boot.kernel is None) == (boot.disk is None):
        raise InvalidInput("boot from either a kernel (with optional initrd) or a disk image")
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
        validate_nic(nic, spec.machine, models, vhost_net)
        if nic.mac in macs:
            raise InvalidInput(f"MAC {nic.mac} is used twice in this VM")
        macs.add(nic.mac)
        if nic.tap is not None:
            _one_nic_per_tap(taps, nic.tap, index)


def _one_nic_per_tap(taps: dict[str, int], tap: str, index: int) -> None:
    """A tap carries one NIC: qemu opens it once, a second open fails with EBUSY."""
    first = taps.setdefault(tap, index)
    if first != index:
        raise InvalidInput(
            f"nics[{first}] and nics[{index}] both use tap {tap!r}; a tap carries one NIC"
        )


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
