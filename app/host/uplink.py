"""A bridge's uplink: the host's physical NIC enslaved into one of our bridges, with the host's
IP configuration moved from the NIC to the bridge (the how-to's br0 + eth0), and back.

`snapshot` reads everything that moves: the NIC's addresses (flags, lifetimes, label,
broadcast, route metric) and every route through it (any table, metrics kept). `attach`
moves it in an order that keeps the host reachable: the bridge takes the addresses first
(the same subnet may live on two links for a moment), then the NIC joins the bridge, then
the NIC's routes and addresses go and the routes come back through the bridge. `restore`
puts the snapshot back (the NIC gets its configuration before the bridge loses it) and is
idempotent, so it also finishes a move or a restore that a crash interrupted. `probe`
checks that the host still reaches its gateway (ICMP echo through the new path).

Everything runs in the calling thread's network namespace through one pyroute2 IPRoute.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from icmplib import ping
from icmplib.exceptions import ICMPLibError
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from app.domain.uplinks import (
    IFA_F_PERMANENT,
    IFA_F_TENTATIVE,
    INFINITY,
    Address,
    NicConfig,
    Route,
    describe,
)
from app.host.errors import HostError
from app.host.procs import in_this_netns, pids, proc_facts

log = logging.getLogger(__name__)

RT_TABLE_LOCAL = 255
IFF_LOOPBACK = 0x8
UNBRIDGEABLE = ("bridge", "tun")  # a bridge cannot be a port; a tap is the VMs' business
DHCP_CLIENTS = ("dhclient", "dhcpcd", "udhcpc", "dhcpcd5", "pump", "dhcp6c")
NETWORK_MANAGERS = ("NetworkManager", "systemd-networkd", "connmand", "wicked")


class UplinkError(HostError):
    """Moving the host's configuration onto a bridge (or back) was refused or failed."""


@dataclass
class LinkFacts:
    index: int
    name: str
    mac: str
    permanent_mac: str | None
    master: int | None
    kind: str | None
    up: bool
    carrier: bool
    loopback: bool = False
    mtu: int | None = None


# ---- reading --------------------------------------------------------------------------------


def link_facts(ipr: IPRoute, name: str) -> LinkFacts | None:
    found = ipr.link_lookup(ifname=name)
    if not found:
        return None
    (msg,) = ipr.link("get", index=found[0])
    info = msg.get_attr("IFLA_LINKINFO")
    return LinkFacts(
        index=msg["index"],
        name=name,
        mac=msg.get_attr("IFLA_ADDRESS"),
        permanent_mac=msg.get_attr("IFLA_PERM_ADDRESS"),
        master=msg.get_attr("IFLA_MASTER"),
        kind=info.get_attr("IFLA_INFO_KIND") if info else None,
        up=bool(msg["flags"] & 1),
        carrier=bool(msg.get_attr("IFLA_CARRIER")),
        loopback=bool(msg["flags"] & IFF_LOOPBACK),
        mtu=msg.get_attr("IFLA_MTU"),
    )


def find_by_mac(ipr: IPRoute, mac: str) -> str | None:
    """The NIC whose permanent MAC (else current MAC) is `mac`: a renamed NIC is still found.
    Bridges are skipped (a bridge that took its uplink's MAC has the same address)."""
    current = None
    for msg in ipr.get_links():
        info = msg.get_attr("IFLA_LINKINFO")
        if info is not None and info.get_attr("IFLA_INFO_KIND") == "bridge":
            continue
        if msg.get_attr("IFLA_PERM_ADDRESS") == mac:
            return str(msg.get_attr("IFLA_IFNAME"))
        if current is None and msg.get_attr("IFLA_ADDRESS") == mac:
            current = str(msg.get_attr("IFLA_IFNAME"))
    return current


def addresses_of(ipr: IPRoute, index: int) -> tuple[Address, ...]:
    result = []
    for msg in ipr.addr("dump", index=index):
        cache = msg.get_attr("IFA_CACHEINFO")
        local = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        family = msg["family"]
        if family == socket.AF_INET6 and local.lower().startswith("fe80"):
            continue  # link-local: each link has its own
        result.append(
            Address(
                family=family,
                address=local,
                prefixlen=msg["prefixlen"],
                broadcast=msg.get_attr("IFA_BROADCAST"),
                label=msg.get_attr("IFA_LABEL"),
                flags=msg.get_attr("IFA_FLAGS") or msg["flags"],
                metric=msg.get_attr("IFA_RT_PRIORITY"),
                preferred=cache["ifa_preferred"] if cache else INFINITY,
                valid=cache["ifa_valid"] if cache else INFINITY,
            )
        )
    return tuple(result)


def routes_through(ipr: IPRoute, index: int) -> tuple[Route, ...]:
    """Every route (all tables but local) whose next hop leaves through link `index`."""
    result = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for msg in ipr.route("dump", family=family):  # every table
            table = msg.get_attr("RTA_TABLE") or msg["table"]
            if msg.get_attr("RTA_OIF") != index or table == RT_TABLE_LOCAL:
                continue
            dst = msg.get_attr("RTA_DST")
            if family == socket.AF_INET6 and (dst or "").startswith(("fe80", "ff00")):
                continue  # link-local and multicast: per link, made by the kernel
            result.append(
                Route(
                    family=family,
                    dst=dst,
                    dst_len=msg["dst_len"],
                    table=table,
                    priority=msg.get_attr("RTA_PRIORITY"),
                    gateway=msg.get_attr("RTA_GATEWAY"),
                    prefsrc=msg.get_attr("RTA_PREFSRC"),
                    proto=msg["proto"],
                    scope=msg["scope"],
                    type=msg["type"],
                    tos=msg["tos"],
                )
            )
    return tuple(result)


def uplink_candidate(ipr: IPRoute, name: str) -> NicConfig:
    """The snapshot of a NIC that may become an uplink (not the loopback, a bridge or a tap)."""
    facts = link_facts(ipr, name)
    if facts is not None and (facts.loopback or facts.kind in UNBRIDGEABLE):
        what = "the loopback interface" if facts.loopback else f"a {facts.kind}"
        raise UplinkError(f"{name} is {what}, not a NIC a bridge can take")
    return snapshot(ipr, name)


def snapshot(ipr: IPRoute, name: str) -> NicConfig:
    facts = link_facts(ipr, name)
    if facts is None:
        raise UplinkError(f"there is no interface {name!r}")
    return NicConfig(
        name=name,
        mac=facts.mac,
        permanent_mac=facts.permanent_mac,
        addresses=addresses_of(ipr, facts.index),
        routes=routes_through(ipr, facts.index),
        dhcp_clients=tuple(dhcp_clients(name)),
        mtu=facts.mtu,
    )


def dhcp_clients(name: str) -> Iterator[str]:
    """Processes in this network namespace that may manage `name`'s address: DHCP clients
    naming it on their command line, and network managers (which manage every NIC)."""
    for pid in pids():
        facts = proc_facts(pid) if in_this_netns(pid) else None
        if facts is None or not facts.argv:
            continue
        program = os.path.basename(facts.argv[0])
        if program in DHCP_CLIENTS and any(name in word for word in facts.argv[1:]):
            yield f"{program} (pid {pid}): {' '.join(facts.argv)[:200]}"
        elif program in NETWORK_MANAGERS:
            yield f"{program} (pid {pid}) may manage {name}"


# ---- changing -------------------------------------------------------------------------------


def _tolerating(codes: tuple[int, ...], fn: Any, *args: Any, **kwargs: Any) -> None:
    try:
        fn(*args, **kwargs)
    except NetlinkError as exc:
        if exc.code not in codes:
            raise


def _add_address(ipr: IPRoute, index: int, address: Address, label: str | None) -> None:
    kwargs: dict[str, Any] = {
        "index": index,
        "family": address.family,
        "address": address.address,
        "prefixlen": address.prefixlen,
    }
    if address.broadcast:
        kwargs["broadcast"] = address.broadcast
    if label:
        kwargs["label"] = label
    if address.metric is not None:
        kwargs["IFA_RT_PRIORITY"] = address.metric
    extra_flags = address.flags & ~(IFA_F_PERMANENT | IFA_F_TENTATIVE | 0x1)  # not secondary
    if extra_flags:
        kwargs["IFA_FLAGS"] = extra_flags
    if address.dynamic:
        kwargs["preferred"] = min(address.preferred, address.valid)
        kwargs["valid"] = address.valid
    _tolerating((errno.EEXIST,), ipr.addr, "add", **kwargs)


def _del_address(ipr: IPRoute, index: int, address: Address) -> None:
    _tolerating(
        (errno.EADDRNOTAVAIL, errno.ENODEV),
        ipr.addr,
        "del",
        index=index,
        family=address.family,
        address=address.address,
        prefixlen=address.prefixlen,
    )


def _route_args(route: Route, index: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "family": route.family,
        "dst_len": route.dst_len,
        "table": route.table,
        "proto": route.proto,
        "scope": route.scope,
        "type": route.type,
        "tos": route.tos,
        "oif": index,
    }
    if route.dst is not None:
        kwargs["dst"] = route.dst
    for key in ("priority", "gateway", "prefsrc"):
        value = getattr(route, key)
        if value is not None:
            kwargs[key] = value
    return kwargs


def _add_route(ipr: IPRoute, index: int, route: Route) -> None:
    _tolerating((errno.EEXIST,), ipr.route, "add", **_route_args(route, index))


def _del_route(ipr: IPRoute, index: int, route: Route) -> None:
    _tolerating((errno.ESRCH, errno.ENODEV), ipr.route, "del", **_route_args(route, index))


def _relabel(label: str | None, nic: str, bridge: str) -> str | None:
    """`eth0:web` becomes `br0:web` (a label must start with its link's name)."""
    if label is None or not label.startswith(nic):
        return None if label == nic else label
    return bridge + label[len(nic) :]


@dataclass
class MoveLog:
    """The steps taken, in words (the API reports them; a dry run lists them untaken)."""

    steps: list[str] = field(default_factory=list)

    def __call__(self, step: str) -> None:
        log.info("uplink: %s", step)
        self.steps.append(step)


def attach(ipr: IPRoute, nic: NicConfig, bridge: str, bridge_mac: str | None, say: MoveLog) -> None:
    """Moves the snapshot's configuration from the NIC to the bridge and enslaves the NIC."""
    nic_facts, bridge_facts = _both(ipr, nic.name, bridge)
    if bridge_mac and bridge_facts.mac != bridge_mac:
        say(f"set {bridge}'s MAC to {bridge_mac}")
        ipr.link("set", index=bridge_facts.index, address=bridge_mac)
    for address in nic.addresses:
        say(f"add {address.cidr} to {bridge}")
        label = _relabel(address.label, nic.name, bridge)
        _add_address(ipr, bridge_facts.index, address, label)
    if nic_facts.master != bridge_facts.index:
        say(f"enslave {nic.name} to {bridge}")
        ipr.link("set", index=nic_facts.index, master=bridge_facts.index, state="up")
    for route in nic.movable_routes:
        say(f"delete route {describe(route)} from {nic.name}")
        _del_route(ipr, nic_facts.index, route)
    for address in nic.addresses:
        say(f"delete {address.cidr} from {nic.name}")
        _del_address(ipr, nic_facts.index, address)
    for route in nic.movable_routes:
        say(f"add route {describe(route)} via {bridge}")
        _add_route(ipr, bridge_facts.index, replace(route, prefsrc=route.prefsrc))


def restore(
    ipr: IPRoute, nic: NicConfig, bridge: str, bridge_mac: str | None, say: MoveLog
) -> None:
    """Puts the snapshot back on the NIC and takes it off the bridge; every step tolerates
    being done already, so this also finishes an interrupted move or restore."""
    nic_facts = link_facts(ipr, nic.name)
    if nic_facts is None:
        raise UplinkError(f"interface {nic.name} is gone: nothing to restore onto")
    bridge_facts = link_facts(ipr, bridge)
    if bridge_facts is not None:
        for route in nic.movable_routes:
            say(f"delete route {describe(route)} from {bridge}")
            _del_route(ipr, bridge_facts.index, route)
    if nic_facts.master is not None and (
        bridge_facts is None or nic_facts.master == bridge_facts.index
    ):
        say(f"release {nic.name} from {bridge}")
        ipr.link("set", index=nic_facts.index, master=0)
    current = {a.cidr: a for a in addresses_of(ipr, bridge_facts.index)} if bridge_facts else {}
    for address in nic.addresses:
        # lifetimes as they are now on the bridge (they kept counting down there)
        live = current.get(address.cidr)
        if live is not None and address.dynamic:
            address = replace(address, preferred=live.preferred, valid=live.valid)
        say(f"add {address.cidr} to {nic.name}")
        _add_address(ipr, nic_facts.index, address, address.label)
    for route in nic.movable_routes:
        say(f"add route {describe(route)} via {nic.name}")
        _add_route(ipr, nic_facts.index, route)
    if bridge_facts is not None:
        for address in nic.addresses:
            say(f"delete {address.cidr} from {bridge}")
            _del_address(ipr, bridge_facts.index, address)
        if bridge_mac and bridge_facts.mac != bridge_mac:
            say(f"set {bridge}'s MAC back to {bridge_mac}")
            _tolerating(
                (errno.ENODEV,), ipr.link, "set", index=bridge_facts.index, address=bridge_mac
            )


def _both(ipr: IPRoute, nic: str, bridge: str) -> tuple[LinkFacts, LinkFacts]:
    nic_facts = link_facts(ipr, nic)
    if nic_facts is None:
        raise UplinkError(f"there is no interface {nic!r}")
    bridge_facts = link_facts(ipr, bridge)
    if bridge_facts is None:
        raise UplinkError(f"bridge {bridge} does not exist (yet)")
    return nic_facts, bridge_facts


def probe(address: str, timeout: float) -> bool:
    """Whether `address` answers an ICMP echo within `timeout` seconds (one echo every half
    second until one is answered)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ping(address, count=1, timeout=0.5, privileged=True).is_alive:
                return True
        except ICMPLibError as exc:
            log.warning("probe of %s: %s", address, exc)
            time.sleep(0.5)
        if time.monotonic() >= deadline:
            return False
