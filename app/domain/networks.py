"""Managed NAT networks, pure: subnet and DHCP-range rules, fixed-address allocation, DNS
host names, and the specs the supervisor turns into nftables rules and dnsmasq configuration.

A network lives on one of our links (a bridge, or a routed tap): the link carries the
gateway address, dnsmasq serves DHCP and DNS there, and our nftables table masquerades the
subnet and forwards host ports to the guests' fixed addresses.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from app.domain.errors import AddressesExhausted, AddressTaken, Conflict, InvalidInput

MAX_PREFIX = 29  # a /30 leaves a gateway and one guest: too small to manage
LEASE_SECONDS = (120, 7 * 24 * 3600)
DEFAULT_LEASE_SECONDS = 3600
PORTS = (1, 65535)
MAX_RANGE_PORTS = 1024
_DNS_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"  # RFC 1123 2.1 host name label
_DNS_LABEL_RE = re.compile(_DNS_LABEL)
_DOMAIN_RE = re.compile(rf"(?:{_DNS_LABEL}\.)*{_DNS_LABEL}")
DOMAIN_MAX = 253
# what validate_domain accepts, for the OpenAPI schema: any case, an optional final dot
DOMAIN_PATTERN = "^" + _DOMAIN_RE.pattern.replace("a-z", "A-Za-z") + r"\.?$"
WILDCARD = IPv4Address("0.0.0.0")
LIMITED_BROADCAST = IPv4Address("255.255.255.255")


def parse_subnet(text: str) -> IPv4Network:
    """An IPv4 network in CIDR form with no host bits set, at most /29."""
    try:
        subnet = IPv4Network(text, strict=True)
    except ValueError as exc:
        raise InvalidInput(f"subnet {text!r} is not an IPv4 network in CIDR form: {exc}") from None
    if subnet.prefixlen > MAX_PREFIX:
        raise InvalidInput(
            f"subnet {text} is too small: a managed network needs at least a /{MAX_PREFIX}"
        )
    if not subnet.is_private or subnet.is_loopback or subnet.is_link_local:
        raise InvalidInput(f"subnet {text} is not a private range (RFC 1918 or similar)")
    return subnet


def parse_address(text: str, what: str) -> IPv4Address:
    try:
        return IPv4Address(text)
    except ValueError:
        raise InvalidInput(f"{what} {text!r} is not an IPv4 address") from None


def host_in(subnet: IPv4Network, address: IPv4Address, what: str) -> IPv4Address:
    """`address` is a usable host of `subnet` (neither its network nor broadcast address)."""
    if address not in subnet:
        raise InvalidInput(f"{what} {address} is outside the subnet {subnet}")
    if address in (subnet.network_address, subnet.broadcast_address):
        raise InvalidInput(f"{what} {address} is the network or broadcast address of {subnet}")
    return address


def default_range(subnet: IPv4Network) -> tuple[IPv4Address, IPv4Address]:
    """The dynamic DHCP pool: the upper half of the hosts (fixed addresses take the lower)."""
    first = int(subnet.network_address) + 1
    last = int(subnet.broadcast_address) - 1
    middle = first + (last - first + 1) // 2
    return IPv4Address(middle), IPv4Address(last)


@dataclass(frozen=True)
class Addressing:
    """A network's validated addressing plan."""

    subnet: IPv4Network
    gateway: IPv4Address
    range_start: IPv4Address
    range_end: IPv4Address

    @property
    def gateway_interface(self) -> str:
        """The gateway as the link's address, e.g. 192.168.100.1/24."""
        return IPv4Interface(f"{self.gateway}/{self.subnet.prefixlen}").with_prefixlen

    def in_range(self, address: IPv4Address) -> bool:
        return self.range_start <= address <= self.range_end


def plan_addressing(
    subnet_text: str,
    gateway_text: str | None,
    range_start_text: str | None,
    range_end_text: str | None,
) -> Addressing:
    """Checks a network's subnet, gateway (default: the first host) and dynamic DHCP range
    (default: the upper half), as a whole."""
    subnet = parse_subnet(subnet_text)
    gateway = (
        host_in(subnet, parse_address(gateway_text, "gateway"), "gateway")
        if gateway_text is not None
        else subnet.network_address + 1
    )
    if (range_start_text is None) != (range_end_text is None):
        raise InvalidInput("give both dhcp range_start and range_end, or neither")
    if range_start_text is None or range_end_text is None:
        start, end = default_range(subnet)
    else:
        start = host_in(subnet, parse_address(range_start_text, "range_start"), "range_start")
        end = host_in(subnet, parse_address(range_end_text, "range_end"), "range_end")
        if start > end:
            raise InvalidInput(f"range_start {start} is after range_end {end}")
    if start <= gateway <= end:
        raise InvalidInput(f"the gateway {gateway} lies inside the DHCP range {start}-{end}")
    return Addressing(subnet, gateway, start, end)


# ---- what DHCP tells the guests besides their address (Neutron's subnet options) -----------

MAX_NAMESERVERS = 5  # Neutron's max_dns_nameservers default
MAX_HOST_ROUTES = 20  # Neutron's max_subnet_host_routes default
DEFAULT_ROUTE = IPv4Network("0.0.0.0/0")


@dataclass(frozen=True)
class HostRoute:
    """A static route a DHCP client installs (Neutron's host_routes entry): `destination`
    through `nexthop`, a host of the network's subnet."""

    destination: IPv4Network
    nexthop: IPv4Address

    def as_dict(self) -> dict[str, str]:
        return {"destination": str(self.destination), "nexthop": str(self.nexthop)}


def check_nameservers(texts: Iterable[str]) -> tuple[IPv4Address, ...]:
    """DNS servers for DHCP option 6 (RFC 2132 3.8), in the order given: at most
    MAX_NAMESERVERS, each a unicast IPv4 address, none twice. None at all means the
    gateway (dnsmasq itself)."""
    servers: list[IPv4Address] = []
    for text in texts:
        address = parse_address(text, "dns_nameservers entry")
        if address.is_multicast or address.is_unspecified or address == LIMITED_BROADCAST:
            raise InvalidInput(f"dns_nameservers entry {address} is not a unicast address")
        if address in servers:
            raise InvalidInput(f"dns_nameservers lists {address} twice")
        servers.append(address)
    if len(servers) > MAX_NAMESERVERS:
        raise InvalidInput(
            f"dns_nameservers lists {len(servers)} servers; at most {MAX_NAMESERVERS}"
        )
    return tuple(servers)


def check_host_routes(
    subnet: IPv4Network, routes: Iterable[tuple[str, str]]
) -> tuple[HostRoute, ...]:
    """Static routes for DHCP option 121 from (destination, nexthop) pairs: each
    destination an IPv4 network in CIDR form without host bits (0.0.0.0/0 included: it then
    replaces the default route through the gateway), none twice; each nexthop a host of
    `subnet` (the guests reach it on the link); at most MAX_HOST_ROUTES."""
    checked: list[HostRoute] = []
    for destination_text, nexthop_text in routes:
        try:
            destination = IPv4Network(destination_text, strict=True)
        except ValueError as exc:
            raise InvalidInput(
                f"host_routes destination {destination_text!r} is not an IPv4 network in "
                f"CIDR form: {exc}"
            ) from None
        nexthop = host_in(
            subnet, parse_address(nexthop_text, "host_routes nexthop"), "host_routes nexthop"
        )
        if any(route.destination == destination for route in checked):
            raise InvalidInput(f"host_routes lists the destination {destination} twice")
        checked.append(HostRoute(destination, nexthop))
    if len(checked) > MAX_HOST_ROUTES:
        raise InvalidInput(f"host_routes lists {len(checked)} routes; at most {MAX_HOST_ROUTES}")
    return tuple(checked)


def classless_routes(routes: Iterable[HostRoute], gateway: IPv4Address) -> tuple[HostRoute, ...]:
    """What DHCP option 121 carries: the host routes, plus the default route through the
    gateway unless one of them is a default route. A client that receives option 121 ignores
    the router option (RFC 3442, "DHCP Client Behavior"), so without it the guests would lose
    their default route. No routes: no option 121 (the router option stands)."""
    routes = tuple(routes)
    if not routes or any(route.destination == DEFAULT_ROUTE for route in routes):
        return routes
    return (*routes, HostRoute(DEFAULT_ROUTE, gateway))


def check_no_overlap(subnet: IPv4Network, others: Iterable[tuple[str | None, str]]) -> None:
    """`others`: (network name, subnet) of every other network; the name None for one the
    caller may not see (another project's: named only as that)."""
    for name, other_text in others:
        other = IPv4Network(other_text)
        if subnet.overlaps(other):
            whose = "a network of another project" if name is None else f"network {name!r}"
            raise Conflict(f"subnet {subnet} overlaps {other} of {whose}")


def allocate_address(
    plan: Addressing, taken: Iterable[str], leased: Iterable[LeaseHolder] = (), pool: bool = False
) -> IPv4Address:
    """The lowest free host outside the dynamic range (so that dnsmasq's pool stays whole),
    else, when no host outside it is left, the lowest free one inside it (a Neutron subnet's
    default pool is every host but the gateway); never the gateway, another fixed address
    or one leased to anyone. `pool`: only inside the dynamic range, which is the Neutron
    subnet's allocation pool (Neutron's IPAM allocates automatic fixed IPs from the pools
    alone; the rest of the subnet is for addresses asked by name). Raises
    AddressesExhausted (409) when no such host is free."""
    used = {IPv4Address(a) for a in taken} | {plan.gateway}
    used |= {IPv4Address(lease.address) for lease in leased}
    free = [a for a in plan.subnet.hosts() if a not in used]
    if pool:
        free = [a for a in free if plan.in_range(a)]
        if not free:
            raise AddressesExhausted(
                f"no free address left in the allocation pool of {plan.subnet}"
            )
        return free[0]
    for address in free:
        if not plan.in_range(address):
            return address
    if free:
        return free[0]
    raise AddressesExhausted(f"no free fixed address left in {plan.subnet}")


def check_fixed_address(
    plan: Addressing, text: str, taken: Iterable[str], leased: Iterable[LeaseHolder] = ()
) -> IPv4Address:
    """A fixed address the user asked for: a host of the subnet, not the gateway, not taken
    by another NIC or port, and not held by a dynamic lease of another MAC (dnsmasq does
    not take a leased address away from its client for a static host: dnsmasq(8),
    --dhcp-host). It may lie inside the dynamic DHCP range (Neutron's default pool is the
    whole subnet but the gateway): dnsmasq never hands out an address a dhcp-host line
    reserves (src/dhcp.c address_allocate skips any config_find_by_address finds, and
    src/rfc2131.c's DHCPDISCOVER offers a client's old or requested address only if no
    dhcp-host claims it)."""
    address = host_in(plan.subnet, parse_address(text, "ipv4"), "ipv4")
    if address == plan.gateway:
        raise InvalidInput(f"ipv4 {address} is the network's gateway")
    if str(address) in set(taken):
        raise AddressTaken(f"ipv4 {address} is already given to another NIC on this network")
    for lease in leased:
        if lease.address == str(address):
            raise AddressTaken(
                f"ipv4 {address} is leased to {lease.describe()}",
                holder=lease.as_dict(),
            )
    return address


@dataclass(frozen=True)
class LeaseHolder:
    """A DHCP lease of another client (from dnsmasq's lease file), with the VM its MAC
    belongs to, when it is one of ours."""

    mac: str
    address: str
    hostname: str | None = None
    vm: str | None = None

    def describe(self) -> str:
        extra = [f"hostname {self.hostname}"] if self.hostname else []
        extra += [f"VM {self.vm!r}"] if self.vm else []
        return f"MAC {self.mac}" + (f" ({', '.join(extra)})" if extra else "")

    def as_dict(self) -> dict[str, str | None]:
        return {"mac": self.mac, "ip": self.address, "hostname": self.hostname, "vm": self.vm}


@dataclass(frozen=True)
class NicAddress:
    """A VM NIC's fixed address on a network, with what was last recorded about the address
    its MAC really holds."""

    nic_id: str
    vm: str
    position: int
    mac: str
    fixed: str
    observed: str | None
    reason: str | None


def observe_address(
    nic: NicAddress, leases: Iterable[tuple[str, str]]
) -> tuple[str | None, str | None]:
    """(the address the NIC's MAC holds, why that is a problem) from the active leases
    (MAC, address). Its own fixed address wins when it holds several; no lease is no
    problem (the guest may not have asked yet, or configures the address itself); the
    fixed address leased to another MAC is one (dnsmasq then gives the NIC another). Another
    address is one dnsmasq handed out before the static lease existed (dnsmasq moves the
    client only when it asks again): port forwards must not target the fixed address then,
    which may be a stranger's."""
    leases = list(leases)
    held = sorted(address for mac, address in leases if mac.lower() == nic.mac.lower())
    if nic.fixed in held:
        return nic.fixed, None
    strangers = sorted(
        m.lower() for m, a in leases if a == nic.fixed and m.lower() != nic.mac.lower()
    )
    if strangers:  # a lease older than the fixed address (kvmnetd before it checked leases)
        return (held[0] if held else None), (
            f"the fixed address {nic.fixed} of NIC {nic.position} of VM {nic.vm!r} is leased "
            f"to MAC {strangers[0]}; port forwards to it are withheld until that lease ends"
        )
    if not held:
        return None, None
    return held[0], (
        f"NIC {nic.position} of VM {nic.vm!r} (MAC {nic.mac}) holds {held[0]} from DHCP, not "
        f"its fixed address {nic.fixed}; port forwards to it are withheld until it renews "
        "its lease"
    )


# ---- the host's own addresses (libvirt's "Network is already in use by interface") --------


@dataclass(frozen=True)
class HostPrefix:
    """An IPv4 address (`192.168.1.5/24`) or connected route (`192.168.1.0/24`, no gateway)
    on a host interface, as the kernel lists them."""

    interface: str
    prefix: str
    kind: str  # "address" or "route"

    @property
    def network(self) -> IPv4Network:
        return IPv4Interface(self.prefix).network


def foreign_clash(
    subnet: IPv4Network, prefixes: Iterable[HostPrefix], own: Mapping[str, Iterable[str]]
) -> HostPrefix | None:
    """The first address or connected route of the host that overlaps `subnet` and is not
    ours. `own`: link name -> the addresses (`a.b.c.d/len`) kvmnetd itself puts there (a
    bridge's or tap's `addresses`, a network's gateway); any other address, even on one of
    our links (an uplink's LAN address moved onto its bridge), belongs to someone else, and
    so does a connected route that is not the network of one of our addresses there. Like
    libvirt's networkCheckRouteCollision (src/network/bridge_driver_linux.c), but any
    overlap counts, not only an identical prefix."""
    for entry in prefixes:
        if not subnet.overlaps(entry.network):
            continue
        mine = {IPv4Interface(a) for a in own.get(entry.interface, ())}
        if entry.kind == "address" and IPv4Interface(entry.prefix) in mine:
            continue
        if entry.kind == "route" and entry.network in {a.network for a in mine}:
            continue
        return entry
    return None


def clash_reason(subnet: IPv4Network, clash: HostPrefix) -> str:
    what = "address" if clash.kind == "address" else "connected route"
    return (
        f"network is already in use by interface {clash.interface}: its {what} "
        f"{clash.prefix} overlaps subnet {subnet} (not kvmnetd's)"
    )


def dns_label(name: str) -> str | None:
    """The VM name as a DNS host name, or None when it is not a valid one (names are never
    rewritten: `web_1` simply gets no DNS name)."""
    label = name.lower()
    return label if _DNS_LABEL_RE.fullmatch(label) else None


def validate_domain(domain: str) -> str:
    """A DNS domain (RFC 1123 labels), returned lower-case without the optional final dot.
    Only ASCII counts: str.lower() would turn the Kelvin sign into 'k'."""
    text = domain.removesuffix(".").lower()
    if len(text) > DOMAIN_MAX or not domain.isascii() or not _DOMAIN_RE.fullmatch(text):
        raise InvalidInput(f"domain {domain!r} is not a valid DNS domain name")
    return text


def validate_lease_seconds(seconds: int) -> int:
    if not LEASE_SECONDS[0] <= seconds <= LEASE_SECONDS[1]:
        raise InvalidInput(
            f"lease_time {seconds} s is outside {LEASE_SECONDS[0]}-{LEASE_SECONDS[1]} s"
        )
    return seconds


# ---- port forwards --------------------------------------------------------------------------


@dataclass(frozen=True)
class PortSpan:
    """Host ports `port`..`end_port` (one port when equal)."""

    port: int
    end_port: int

    def overlaps(self, other: PortSpan) -> bool:
        return self.port <= other.end_port and other.port <= self.end_port

    def __str__(self) -> str:
        return str(self.port) if self.port == self.end_port else f"{self.port}-{self.end_port}"


def check_forward_ports(port: int, end_port: int | None, target_port: int | None) -> PortSpan:
    """A forward of one port (to `target_port`, default the same) or of a range, which keeps
    the port numbers (nftables DNAT maps a range onto the same ports, not onto an offset)."""
    end = port if end_port is None else end_port
    for value, what in ((port, "port"), (end, "end_port"), (target_port, "target_port")):
        if value is not None and not PORTS[0] <= value <= PORTS[1]:
            raise InvalidInput(f"{what} {value} is outside {PORTS[0]}-{PORTS[1]}")
    if end < port:
        raise InvalidInput(f"end_port {end} is below port {port}")
    if end - port + 1 > MAX_RANGE_PORTS:
        raise InvalidInput(f"a forward spans at most {MAX_RANGE_PORTS} ports")
    if end != port and target_port is not None and target_port != port:
        raise InvalidInput("a port range forwards to the same port numbers: omit target_port")
    return PortSpan(port, end)


def listen_address(text: str | None) -> IPv4Address:
    """A forward's listen address; None or 0.0.0.0 means every address of the host."""
    if text is None:
        return WILDCARD
    address = parse_address(text, "listen_address")
    if address.is_multicast or address == LIMITED_BROADCAST:
        raise InvalidInput(f"listen_address {address} is not a unicast address")
    return address


def clashes(a_address: str, b_address: str) -> bool:
    """Two listen addresses collide when equal or when either is the wildcard."""
    return a_address == b_address or str(WILDCARD) in (a_address, b_address)


# ---- what dnsmasq serves --------------------------------------------------------------------


@dataclass(frozen=True)
class StaticHost:
    """A static lease: this MAC always gets this address (and `hostname` resolves to it)."""

    mac: str
    address: str
    hostname: str | None


@dataclass(frozen=True)
class DhcpDnsSpec:
    """What one network's dnsmasq serves, on which link."""

    network_id: str
    interface: str
    subnet: str
    gateway: str
    dhcp: bool
    range_start: IPv4Address
    range_end: IPv4Address
    lease_seconds: int
    domain: str | None
    hosts: tuple[StaticHost, ...]
    # DHCP option 6; empty: the gateway (dnsmasq itself)
    nameservers: tuple[IPv4Address, ...] = ()
    # DHCP option 121 (classless_routes: the default route included); empty: none
    routes: tuple[HostRoute, ...] = ()


def static_hosts(nics: Iterable[tuple[str, str, str, int]]) -> tuple[StaticHost, ...]:
    """Static leases from (VM name, MAC, address, NIC position) of the NICs on a network,
    given oldest VM first: the VM's first NIC there gets the VM's name, further ones
    `<name>-nic<position>`. Host names are case-insensitive (RFC 4343), so `Web` and `web`
    are one name: a name already given (to an older VM, or as another VM's `-nic<n>` name)
    is never taken over; the later NIC gets `<name>-nic<position>` if that is free, else
    no name."""
    nics = list(nics)
    seniority: dict[str, int] = {}
    for vm_name, *_ in nics:
        seniority.setdefault(vm_name, len(seniority))
    named: set[str] = set()
    hosts = []
    for vm_name, mac, address, position in sorted(nics, key=lambda n: (seniority[n[0]], n[3])):
        label = dns_label(vm_name)
        if label is not None and label in named:
            label = dns_label(f"{vm_name}-nic{position}")
        if label is not None and label in named:
            label = None
        if label is not None:
            named.add(label)
        hosts.append(StaticHost(mac, address, label))
    return tuple(hosts)


@dataclass(frozen=True)
class AddressHolder:
    """An IPv4 address kvmnetd has given out, for the link-address clash checks: a network's
    gateway or subnet (`kind` "network"), a VM NIC's or port's fixed address ("vm_nic",
    "port"), or an address
    of one of our bridges or taps ("bridge", "tap"). `link`: the kernel name of the link it
    is on; `address`: `a.b.c.d/len` (a network's is its gateway with the subnet's length)."""

    kind: str
    name: str
    link: str
    address: str
    project_id: str | None = None
    # another project's, to the caller: named by kind only (no name, link or address)
    hidden: bool = False

    def hidden_unless(self, sees: Callable[[str], bool]) -> AddressHolder:
        """This holder as a caller who `sees` some projects may know it."""
        if self.project_id is None or sees(self.project_id):
            return self
        return replace(self, hidden=True)

    def as_dict(self) -> dict[str, str | None]:
        if self.hidden:
            return {"kind": self.kind, "name": "(another project's)", "link": None, "ip": None}
        return {"kind": self.kind, "name": self.name, "link": self.link, "ip": self.address}


def check_link_address(link: str, address: IPv4Interface, held: Iterable[AddressHolder]) -> None:
    """An address the user puts on our link `link` must not be anyone else's (the host would
    answer for it, RFC 1122 3.3.4.2 "weak end system": any interface's address is the host's):
    not a network's gateway, a NIC's fixed address or another link's address, and not inside
    a managed network's subnet unless on that network's own link (where only dnsmasq and the
    fixed addresses hand out hosts, so it must still be none of those)."""
    for holder in held:
        theirs = IPv4Interface(holder.address)
        if holder.kind == "network" and holder.link != link and address.ip in theirs.network:
            whose = _describe(holder) if holder.hidden else f"network {holder.name!r}"
            on = "" if holder.hidden else f" on {holder.link}"
            raise Conflict(
                f"address {address} lies in subnet {theirs.network} of {whose}{on}",
                holder=holder.as_dict(),
            )
        if address.ip == theirs.ip:
            raise Conflict(
                f"address {address} is already held by {_describe(holder)}",
                holder=holder.as_dict(),
            )


def check_subnet_free(subnet: IPv4Network, link: str, held: Iterable[AddressHolder]) -> None:
    """A new network's subnet must not contain an address of another of our links."""
    for holder in held:
        ours = holder.kind in ("bridge", "tap") and holder.link != link
        if ours and IPv4Interface(holder.address).ip in subnet:
            what = "an address" if holder.hidden else f"address {holder.address}"
            raise Conflict(
                f"subnet {subnet} contains {what} of {_describe(holder)}",
                holder=holder.as_dict(),
            )


def _describe(holder: AddressHolder) -> str:
    if holder.hidden:
        kind = "VM NIC" if holder.kind == "vm_nic" else holder.kind
        return f"a {kind} of another project"
    if holder.kind == "network":
        return f"network {holder.name!r} (its gateway, on {holder.link})"
    if holder.kind == "vm_nic":
        return f"{holder.name} (its fixed address, on {holder.link})"
    if holder.kind == "port":
        return f"port {holder.name!r} (its fixed address, on {holder.link})"
    return f"{holder.kind} {holder.name!r}"
