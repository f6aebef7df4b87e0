"""Validators for what crosses into the kernel: link names, MACs, interface addresses, MTUs;
and the kernel name (ifname) of a bridge or tap in its project (link_ifname).

Every validator either returns a normalized value or raises InvalidInput with the reason;
nothing is ever truncated or silently fixed up.
"""

from __future__ import annotations

import ipaddress
import re
import uuid

from app.domain.errors import InvalidInput
from app.domain.tenancy import DEFAULT_PROJECT_ID

LINK_NAME_MAX = 15  # IFNAMSIZ - 1
LINK_NAME_CHARS = "A-Za-z0-9_.-"  # a regex character class body
_LINK_NAME_RE = re.compile(f"[{LINK_NAME_CHARS}]+")
_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
RESERVED_LINK_NAMES = frozenset({".", "..", "all", "default"})
MTU_MIN = 68
IPV6_MIN_MTU = 1280
STP_FORWARD_DELAY_CS = (200, 3000)  # with STP on, the kernel wants 2-30 s
MTU_MAX = 65521  # the largest MTU a tap accepts; bridges follow their ports
MAX_ADDRESSES = 32
# The largest uid/gid a tap can be given (TUNSETOWNER/TUNSETGROUP): the ioctl argument goes
# through a C int, so 2**31 and above fail with ECOMM; read back via netlink IFLA_TUN_OWNER,
# 2**31 - 1 is the largest owner that sticks (tests/api/test_links_api.py checks both ends).
TUN_OWNER_MAX = 2**31 - 1


def _reserved_alternatives() -> str:
    return "|".join(re.escape(name) for name in sorted(RESERVED_LINK_NAMES))


# The same rules as patterns for the OpenAPI schema, so that generated clients and fuzzers
# agree with the validators (which stay the single authority and explain each refusal).
# ECMA-262 syntax: there `$` matches only at the very end (Python's `re` also matches before a
# final newline; the validators use fullmatch). tests/unit/test_patterns.py checks that each
# pattern accepts exactly what its validator accepts.
LINK_NAME_PATTERN = f"^(?!(?:{_reserved_alternatives()})$)[{LINK_NAME_CHARS}]{{1,{LINK_NAME_MAX}}}$"
# unicast: the I/G bit (the lowest bit of the first octet) clear; never all-zero
# A VM name is a host name label (RFC 1123 2.1: letters, digits, '-', neither first nor last
# '-'), so that it is the VM's DNS and DHCP host name; at most 15 long, so that it never looks
# like a 36-character id where either is accepted.
VM_NAME_MAX = 15
VM_NAME_PATTERN = f"^[A-Za-z0-9](?:[A-Za-z0-9-]{{0,{VM_NAME_MAX - 2}}}[A-Za-z0-9])?$"
_VM_NAME_RE = re.compile(VM_NAME_PATTERN.removeprefix("^").removesuffix("$"))
MAC_PATTERN = r"^(?!(?:00[:-]){5}00$)[0-9A-Fa-f][02468aceACE](?:[:-][0-9A-Fa-f]{2}){5}$"


def validate_link_name(name: str) -> str:
    """A Linux interface name: 1-15 chars of [A-Za-z0-9_.-], not '.' or '..'."""
    if not isinstance(name, str) or not name:
        raise InvalidInput("link name must be a non-empty string")
    if len(name) > LINK_NAME_MAX:
        raise InvalidInput(
            f"link name {name!r} is {len(name)} characters; the kernel allows at most "
            f"{LINK_NAME_MAX} and names are never truncated"
        )
    if not _LINK_NAME_RE.fullmatch(name):
        raise InvalidInput(f"link name {name!r} may contain only letters, digits, '_', '.' and '-'")
    if name in RESERVED_LINK_NAMES:
        raise InvalidInput(
            f"link name {name!r} is reserved (the kernel refuses it: it would clash with "
            "/proc/sys/net/*/conf/all and .../default, or with the directory entries)"
        )
    return name


# The kernel name (ifname) of a bridge or tap outside the default project: this prefix, then
# the first IFNAME_ID_DIGITS hex digits of the resource's id (dashes left out), e.g. bridge
# 3f2a9c1e-77b0-4d1a-... -> kb3f2a9c1e77b04. 2 + 13 = 15 characters, IFNAMSIZ - 1.
IFNAME_PREFIXES = {"bridge": "kb", "tap": "kt"}
IFNAME_ID_DIGITS = LINK_NAME_MAX - 2


def link_ifname(kind: str, project_id: str, resource_id: str, name: str) -> str:
    """The kernel name of a bridge or tap (`kind`) called `name` in project `project_id`.

    In the default project it is `name` itself, so the how-to's `br0` is `br0` on the host
    (and rows from before projects keep their links). In any other project it is derived
    from the resource id, never from the user's name: `kb` (bridge) or `kt` (tap) and the
    id's first 13 hex digits, 15 characters. Names are unique per project, ids everywhere,
    so two projects' `br0` never meet in the kernel; the name is never truncated. Of the 13
    digits the 13th is the UUID's version (4), so 48 bits are random: the kernel name is
    claimed like any other (link_names), and the rare clash is refused, never shared."""
    if project_id == DEFAULT_PROJECT_ID:
        return validate_link_name(name)
    prefix = IFNAME_PREFIXES.get(kind)
    if prefix is None:
        raise ValueError(f"no derived kernel names for links of kind {kind!r}")
    return prefix + uuid.UUID(resource_id).hex[:IFNAME_ID_DIGITS]


# Neutron's linuxbridge agent names a network's bridge `brq` + the network id's first 11
# characters (neutron/plugins/ml2/drivers/linuxbridge/agent: BRIDGE_NAME_PREFIX, and
# get_bridge_name: network_id[:11]); ids here are UUIDs, so those are hex digits and at most
# one dash: the dashes are left out, as for link_ifname. 3 + 11 = 14 characters.
NEUTRON_BRIDGE_PREFIX = "brq"
NEUTRON_ID_DIGITS = 11


def neutron_bridge_ifname(resource_id: str) -> str:
    """The kernel name of a bridge made for a Neutron `local` network (any project): `brq`
    and the id's first 11 hex digits, e.g. 3f2a9c1e-77b0-... -> brq3f2a9c1e77b. Claimed like
    every kernel name of ours (link_names), so the rare clash is refused, never shared."""
    return NEUTRON_BRIDGE_PREFIX + uuid.UUID(resource_id).hex[:NEUTRON_ID_DIGITS]


def validate_vm_name(name: str) -> str:
    """A VM name: a host name label (RFC 1123 2.1) of 1-15 characters. Unique without
    regard to case, as host names are (RFC 4343); the service checks that."""
    if not isinstance(name, str) or not name:
        raise InvalidInput("VM name must be a non-empty string")
    if len(name) > VM_NAME_MAX:
        raise InvalidInput(
            f"VM name {name!r} is {len(name)} characters; at most {VM_NAME_MAX} are allowed "
            "and names are never truncated"
        )
    if not _VM_NAME_RE.fullmatch(name):
        raise InvalidInput(
            f"VM name {name!r} must be a host name label (RFC 1123): only letters, digits "
            "and '-', neither first nor last '-'"
        )
    return name


def validate_mac(mac: str) -> str:
    """A unicast, non-zero Ethernet MAC in colon notation; returned lower-case."""
    if not isinstance(mac, str):
        raise InvalidInput("MAC address must be a string")
    normalized = mac.lower().replace("-", ":")
    if not _MAC_RE.fullmatch(normalized):
        raise InvalidInput(f"{mac!r} is not a MAC address like 52:54:00:12:34:56")
    first_octet = int(normalized[:2], 16)
    if first_octet & 1:
        raise InvalidInput(f"MAC address {mac!r} is multicast; a NIC needs a unicast MAC")
    if normalized == "00:00:00:00:00:00":
        raise InvalidInput("MAC address 00:00:00:00:00:00 is not a valid interface address")
    return normalized


def validate_interface_address(value: str) -> str:
    """A host address with prefix, e.g. 192.168.105.1/24 or fd00::1/64 (normalized)."""
    if not isinstance(value, str) or "/" not in value:
        raise InvalidInput(
            f"{value!r} must be an address with a prefix length, like 192.168.105.1/24"
        )
    try:
        iface = ipaddress.ip_interface(value.strip())
    except ValueError as exc:
        raise InvalidInput(f"{value!r} is not a valid interface address: {exc}") from None
    ip = iface.ip
    if ip.is_multicast or ip.is_unspecified or ip.is_loopback:
        raise InvalidInput(
            f"{value!r} cannot be assigned to a link (multicast/unspecified/loopback)"
        )
    net = iface.network
    if (
        isinstance(ip, ipaddress.IPv4Address)
        and net.prefixlen < 31
        and ip
        in (
            net.network_address,
            net.broadcast_address,
        )
    ):
        raise InvalidInput(f"{value!r} is the network or broadcast address of its subnet")
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_link_local:
        raise InvalidInput(f"{value!r} is link-local; the kernel manages link-local addresses")
    return str(iface)


def validate_addresses(values: list[str]) -> list[str]:
    """A list of interface addresses, normalized, without duplicates, bounded in size."""
    if len(values) > MAX_ADDRESSES:
        raise InvalidInput(f"at most {MAX_ADDRESSES} addresses per link")
    normalized = [validate_interface_address(v) for v in values]
    seen: set[str] = set()
    for addr in normalized:
        if addr in seen:
            raise InvalidInput(f"address {addr} is listed twice")
        seen.add(addr)
    return normalized


def validate_link_settings(mtu: int | None, addresses: list[str]) -> None:
    """Combinations the kernel would refuse after the link exists: IPv6 needs MTU >= 1280."""
    if mtu is not None and mtu < IPV6_MIN_MTU:
        v6 = [a for a in addresses if ":" in a]
        if v6:
            raise InvalidInput(
                f"IPv6 address {v6[0]} needs an MTU of at least {IPV6_MIN_MTU}, not {mtu}"
            )


def validate_bridge_timers(stp: bool, forward_delay_cs: int) -> None:
    """With STP on, the kernel only accepts a forward delay of 2-30 s."""
    low, high = STP_FORWARD_DELAY_CS
    if stp and not low <= forward_delay_cs <= high:
        raise InvalidInput(
            f"with stp on, forward_delay must be between {low // 100} and {high // 100} "
            f"seconds (got {forward_delay_cs / 100:g}); turn stp off for a delay of 0"
        )
