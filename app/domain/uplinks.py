"""Uplinks, pure: the NIC configuration that moves between a host NIC and a bridge (addresses
and routes as netlink reports them), and the steps of a move or a restore in words (what a
dry run shows). app.host.uplink performs them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

RTPROT_KERNEL = 2
IFA_F_PERMANENT = 0x80
IFA_F_TENTATIVE = 0x40
INFINITY = 0xFFFFFFFF
MAIN_TABLE = 254


@dataclass(frozen=True)
class Address:
    family: int
    address: str
    prefixlen: int
    broadcast: str | None = None
    label: str | None = None
    flags: int = 0  # IFA_FLAGS (secondary, noprefixroute, ...)
    metric: int | None = None  # IFA_RT_PRIORITY: the metric of its prefix route
    preferred: int = INFINITY
    valid: int = INFINITY

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefixlen}"

    @property
    def dynamic(self) -> bool:
        """Has a finite lifetime: a DHCP client or SLAAC manages it."""
        return self.valid != INFINITY

    def essence(self) -> tuple[object, ...]:
        """What must be identical after a round trip (lifetimes count down; DAD flags pass)."""
        flags = self.flags & ~IFA_F_TENTATIVE
        return (self.family, self.cidr, self.broadcast, self.label, flags, self.metric)


@dataclass(frozen=True)
class Route:
    family: int
    dst: str | None  # None: default
    dst_len: int
    table: int
    priority: int | None
    gateway: str | None
    prefsrc: str | None
    proto: int
    scope: int
    type: int
    tos: int = 0

    def essence(self) -> tuple[object, ...]:
        return tuple(asdict(self).values())


@dataclass(frozen=True)
class NicConfig:
    """What moves between the NIC and the bridge, as it was on the NIC."""

    name: str
    mac: str
    permanent_mac: str | None
    addresses: tuple[Address, ...] = ()
    routes: tuple[Route, ...] = ()
    dhcp_clients: tuple[str, ...] = ()
    mtu: int | None = None  # the bridge keeps it while attached (unless it has its own)

    @property
    def movable_routes(self) -> tuple[Route, ...]:
        """Routes the kernel does not make itself from an address (those come along)."""
        return tuple(r for r in self.routes if r.proto != RTPROT_KERNEL)

    @property
    def gateway(self) -> str | None:
        """The default gateway through this NIC (the probe target by default)."""
        defaults = [r for r in self.routes if r.dst is None and r.gateway and r.family == 2]
        defaults.sort(key=lambda r: r.priority or 0)
        return defaults[0].gateway if defaults else None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: object) -> NicConfig:
        """The configuration the journal saved; JournalError when it is not one (a damaged
        database row must stay that uplink's problem)."""
        try:
            if not isinstance(data, dict):
                raise TypeError(f"a {type(data).__name__}, not an object")
            config = cls(
                name=data["name"],
                mac=data["mac"],
                permanent_mac=data.get("permanent_mac"),
                addresses=tuple(Address(**a) for a in data.get("addresses", ())),
                routes=tuple(Route(**r) for r in data.get("routes", ())),
                dhcp_clients=tuple(data.get("dhcp_clients", ())),
                mtu=data.get("mtu"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise JournalError(f"the saved NIC configuration is damaged: {exc!r}") from None
        _check_types(config)
        return config


class JournalError(ValueError):
    """The uplink journal's saved configuration cannot be read back."""


def _check_types(config: NicConfig) -> None:
    texts = [config.name, config.mac, *config.dhcp_clients]
    texts += [a.address for a in config.addresses]
    numbers = [n for a in config.addresses for n in (a.family, a.prefixlen, a.flags)]
    numbers += [n for r in config.routes for n in (r.family, r.dst_len, r.table, r.proto)]
    if config.mtu is not None:
        numbers.append(config.mtu)
    if not all(isinstance(t, str) for t in texts) or not all(
        isinstance(n, int) and not isinstance(n, bool) for n in numbers
    ):
        raise JournalError("the saved NIC configuration is damaged: a field has the wrong type")


def attach_steps(nic: NicConfig, bridge: str, bridge_mac: str | None) -> list[str]:
    """What `attach` will do, in order (for a dry run)."""
    steps = []
    if bridge_mac:
        steps.append(f"set {bridge}'s MAC to {bridge_mac}")
    steps += [f"add {a.cidr} to {bridge}" for a in nic.addresses]
    steps.append(f"enslave {nic.name} to {bridge}")
    steps += [f"delete route {describe(r)} from {nic.name}" for r in nic.movable_routes]
    steps += [f"delete {a.cidr} from {nic.name}" for a in nic.addresses]
    steps += [f"add route {describe(r)} via {bridge}" for r in nic.movable_routes]
    return steps


def describe(route: Route) -> str:
    dst = f"{route.dst}/{route.dst_len}" if route.dst else "default"
    via = f" via {route.gateway}" if route.gateway else ""
    metric = f" metric {route.priority}" if route.priority is not None else ""
    table = f" table {route.table}" if route.table != MAIN_TABLE else ""
    return f"{dst}{via}{metric}{table}"


def restore_steps(nic: NicConfig, bridge: str, bridge_mac: str | None) -> list[str]:
    """What `restore` will do, in order (for a dry run of a detach)."""
    steps = [f"delete route {describe(r)} from {bridge}" for r in nic.movable_routes]
    steps.append(f"release {nic.name} from {bridge}")
    steps += [f"add {a.cidr} to {nic.name}" for a in nic.addresses]
    steps += [f"add route {describe(r)} via {nic.name}" for r in nic.movable_routes]
    steps += [f"delete {a.cidr} from {bridge}" for a in nic.addresses]
    if bridge_mac:
        steps.append(f"set {bridge}'s MAC back to {bridge_mac}")
    return steps


def dhcp_refusal(nic: NicConfig) -> str | None:
    """Why moving this NIC's configuration needs the user's choice, if it does: a DHCP client
    (or a network manager) manages its address, or an address has a finite lifetime."""
    dynamic = [a.cidr for a in nic.addresses if a.dynamic]
    if not nic.dhcp_clients and not dynamic:
        return None
    what = "; ".join(nic.dhcp_clients) or f"{', '.join(dynamic)} has a finite lifetime (a lease)"
    return (
        f"{nic.name}'s address is managed dynamically ({what}). The how-to moves DHCP to the "
        f"bridge: stop the client on {nic.name} and run it on the bridge once it is attached. "
        "Or pass dhcp=move: the address moves as it is, with its remaining lifetime, and its "
        f"client must be pointed at the bridge before the lease ends"
    )
