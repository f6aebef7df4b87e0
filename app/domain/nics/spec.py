"""A VM NIC as the domain sees it (NicSpec) and the settings of the built-in backends.

Pure data (stdlib only). `NicSpec.backend` names a driver in app.domain.nics' registry;
`Backend` lists the built-in ones (the API's enum).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from app.domain.errors import InvalidInput
from app.domain.nics.offloads import Offloads

QUEUES = (1, 16)
PORTS = (1, 65535)
MTU_RANGE = (68, 65521)  # ETH_MIN_MTU to the largest MTU a tap accepts
MTU_MODEL = "virtio-net-pci"  # the one model that tells the guest its MTU (host_mtu)
HUBS = (0, 1024)


class Backend(enum.StrEnum):
    BRIDGE = "bridge"  # a tap the daemon makes, attached to one of our bridges
    TAP = "tap"  # one of our tap resources
    USER = "user"  # QEMU user networking (slirp)
    SOCKET = "socket"  # VM-to-VM over a loopback TCP socket, or multicast
    HUB = "hub"  # a QEMU-internal hub (the old -net nic,vlan=N)
    PORT = "port"  # one of our port resources (its tap, MAC and fixed IP: Neutron's port)
    MACVTAP = "macvtap"  # a macvtap the daemon makes on a host interface (issue 13)
    SRIOV = "sriov"  # an SR-IOV virtual function handed to qemu through vfio-pci (issue 13)


class Vhost(enum.StrEnum):
    AUTO = "auto"
    ON = "on"
    OFF = "off"


VHOST_MODEL = "virtio-net-pci"  # the one guest NIC vhost-net accelerates (app.domain.vhost)


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
    """`listen`/`connect` on a loopback TCP port, or `mcast` on a group address:port.
    `peer` is the `<vm>/<nic index>` a connecting NIC was given (kept for people reading)."""

    mode: str  # "listen", "connect" or "mcast"
    port: int
    address: str = "127.0.0.1"
    peer: str | None = None


@dataclass(frozen=True)
class VfSpec:
    """An SR-IOV NIC's virtual function: the PF it belongs to, its PCI address and index on
    the PF, and what the PF's driver sets for it (ip-link(8) `vf N vlan .. spoofchk ..
    trust ..`; the NIC's MAC is the VF's)."""

    pf: str
    pci_address: str
    index: int
    vlan: int | None = None
    spoof_check: bool = True
    trust: bool = False


@dataclass(frozen=True)
class NicSpec:
    """A guest NIC on a backend; or, with no model, a backend that only joins hub `hub`
    (the how-to's `-net tap -net socket` on one vlan: QEMU's hubport with netdev=)."""

    id: str
    model: str | None
    mac: str
    backend: str  # a registered driver's name (Backend for the built-in ones)
    tap: str | None = None  # the kernel tap (bridge, tap, port and macvtap backends)
    port: str | None = None  # the port resource's id (port backend)
    user: UserNet | None = None
    socket: SocketNet | None = None
    hub: int | None = None
    queues: int = 1
    vhost: Vhost = Vhost.AUTO
    link_up: bool = True
    mtu: int | None = None  # virtio's host_mtu; the tap's MTU on the bridge and tap backends
    # virtio's checksum/TSO/GSO switches (app.domain.nics.offloads)
    offloads: Offloads = field(default_factory=Offloads)
    # macvtap backend (issue 13): the host interface it sits on and its IFLA_MACVLAN_MODE
    parent: str | None = None
    macvtap_mode: str | None = None
    vf: VfSpec | None = None  # sriov backend (issue 13)


def bounded(what: str, value: int, bounds: tuple[int, int]) -> None:
    """InvalidInput unless `value` is a whole number within `bounds` (inclusive)."""
    low, high = bounds
    if isinstance(value, bool) or not low <= value <= high:
        raise InvalidInput(f"{what} must be between {low} and {high} (got {value})")


def either(names: list[str]) -> str:
    """`a, b or c`."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
