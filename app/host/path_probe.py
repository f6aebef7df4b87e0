"""Active path probe of a managed network: does a new guest on it get a DHCP offer, a DNS
answer from its gateway, and its traffic forwarded by the host?

Rule text alone misses firewalls that drop our traffic (a foreign input chain dropping
DHCP/DNS, a forward chain ending in an unconditional reject), so the probe sends real
packets along the guest's path, from a throwaway port on the network's bridge:

- a network namespace `kvmnetd-probe-<daemon pid>-<tag>` with one end of a veth pair as its
  `eth0`, the other end a port of the network's bridge (marked `kvmnetd-probe:` in its
  ifalias, which the link supervisor's orphan sweep never takes for its own);
- DHCP: a DHCPDISCOVER sent as a raw frame (app.domain.dhcp), answered by our dnsmasq with a
  DHCPOFFER (the offer is never requested, so no lease is taken);
- DNS: with the offered address, a `version.bind CH TXT` query to the offered DNS server
  (dnsmasq answers it itself, whatever its upstream servers do) through dnspython;
- forwarding: ICMP echo (icmplib) to a second throwaway namespace behind a veth pair in the
  daemon's namespace, addressed from the RFC 2544 benchmarking range 198.18.0.0/15 where it
  overlaps nothing on this host.
Every step has a deadline; both namespaces (and with them every veth) are removed in a
`finally`, and leftovers of an earlier probe whose daemon died are removed first.

Functions here act in the calling thread's network namespace (the daemon's); the probe's
own side runs on threads that entered the probe namespaces.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import icmplib
from pyroute2 import IPRoute, NetlinkError, netns

from app.domain.dhcp import ETH_P_IP, Offer, discover_frame, parse_offer
from app.domain.path_probe import ProbeTarget, Step, StepResult
from app.host.netns import call_in as _in

log = logging.getLogger(__name__)


NS_PREFIX = "kvmnetd-probe-"
ALIAS = "kvmnetd-probe:"
NETNS_DIR = Path("/run/netns")
OUTSIDE_POOL = IPv4Network("198.18.0.0/15")  # RFC 2544: for benchmarks, not for any LAN
DHCP_TIMEOUT = 6.0  # dnsmasq ping-checks an address before offering it (dnsmasq(8) --no-ping)
DNS_TIMEOUT = 2.0
PING_TIMEOUT = 1.0
PING_COUNT = 3


@dataclass
class _Probe:
    """The throwaway objects of one probe, removed together."""

    tag: str
    inside: str  # namespace of the guest's side
    outside: str  # namespace of the "outside world"
    port: str  # veth end on the network's bridge
    uplink: str  # veth end towards the outside namespace
    made: list[str] = field(default_factory=list)  # namespaces to remove

    @classmethod
    def new(cls) -> _Probe:
        tag = secrets.token_hex(3)
        base = f"{NS_PREFIX}{os.getpid()}-{tag}"
        return cls(tag, base, base + "-out", f"kvp{tag}", f"kvo{tag}")


def probe_path(target: ProbeTarget) -> list[StepResult]:
    """Probe one network from a throwaway port on its bridge: the dhcp, dns and forward steps
    in order (a step that cannot run because an earlier one failed is reported skipped)."""
    if target.bridge is None:
        return [StepResult("dhcp", None, "a network on a routed tap has no port to probe from")]
    if target.stp_forward_delay_s:
        why = (
            f"bridge {target.bridge} runs STP: a new port forwards only after "
            f"{2 * target.stp_forward_delay_s:g} s, too long for a probe"
        )
        return [StepResult("dhcp", None, why)]
    remove_leftovers()
    probe = _Probe.new()
    try:
        return _run(probe, target)
    except OSError as exc:
        log.warning("path probe of network %s could not be set up: %s", target.network, exc)
        return [StepResult("dhcp", False, f"the probe could not be set up: {exc}")]
    finally:
        _unplug(probe)
        _remove(probe.made)


def _run(probe: _Probe, target: ProbeTarget) -> list[StepResult]:
    with IPRoute() as ipr:
        mac = _plug_port(ipr, probe, target.bridge or "")
    dhcp, offer = _dhcp_step(probe, mac, target)
    if offer is None:
        why = "skipped: no address without a DHCP offer"
        return [dhcp, StepResult("dns", None, why), StepResult("forward", None, why)]
    _in(probe.inside, lambda: _configure_inside(offer, target))
    return [
        dhcp,
        _dns_step(probe, offer, target),
        _guarded("forward", lambda: _forward_step(probe)),
    ]


def _guarded(step: Step, fn: Callable[[], StepResult]) -> StepResult:
    """A step whose own set-up failed reports that, without losing the other steps."""
    try:
        return fn()
    except OSError as exc:
        return StepResult(step, False, f"the probe could not be set up: {exc}")


# --- set-up ----------------------------------------------------------------------------------


def _plug_port(ipr: IPRoute, probe: _Probe, bridge: str) -> bytes:
    """The probe namespace, its eth0, and the other end of it as a port of `bridge`; returns
    eth0's MAC."""
    bridge_index = _index(ipr, bridge)
    _make_netns(probe, probe.inside)
    ipr.link(
        "add", ifname=probe.port, kind="veth", peer={"ifname": "eth0", "net_ns_fd": probe.inside}
    )
    port = _index(ipr, probe.port)
    ipr.link("set", index=port, ifalias=f"{ALIAS}{bridge}", master=bridge_index, state="up")

    def inside() -> bytes:
        with IPRoute() as own:
            own.link("set", index=_index(own, "lo"), state="up")
            eth0 = _index(own, "eth0")
            own.link("set", index=eth0, state="up")
            address = own.get_links(eth0)[0].get_attr("IFLA_ADDRESS")
        return bytes.fromhex(address.replace(":", ""))

    return _in(probe.inside, inside)


def _configure_inside(offer: Offer, target: ProbeTarget) -> None:
    """The offered address on eth0 and a default route through the offered router, as the
    guest's DHCP client would set them (the offer is never requested: nothing is leased)."""
    prefixlen = offer.prefixlen or target.prefixlen
    router = offer.routers[0] if offer.routers else IPv4Address(target.gateway)
    with IPRoute() as ipr:
        eth0 = _index(ipr, "eth0")
        ipr.addr("add", index=eth0, address=str(offer.address), prefixlen=prefixlen)
        ipr.route("add", dst="0.0.0.0/0", gateway=str(router))


def _make_netns(probe: _Probe, name: str) -> None:
    netns.create(name)
    probe.made.append(name)


def _index(ipr: IPRoute, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise OSError(f"no link {name!r}")
    return int(found[0])


def _unplug(probe: _Probe) -> None:
    """Delete our veth ends at once (a veth pair goes with either end): the kernel cleans a
    removed namespace up asynchronously, so its veths would linger on the bridge a moment."""
    with IPRoute() as ipr:
        for name in (probe.port, probe.uplink):
            found = ipr.link_lookup(ifname=name)
            if found:
                with contextlib.suppress(NetlinkError):  # gone meanwhile
                    ipr.link("del", index=found[0])


def _remove(namespaces: list[str]) -> None:
    """Removing a namespace also removes whatever veth end is left in it, and its peer."""
    for name in reversed(namespaces):
        try:
            netns.remove(name)
        except OSError as exc:
            log.warning("could not remove probe namespace %s: %s", name, exc)


def remove_leftovers() -> None:
    """Probe namespaces of daemons that are gone (a crash in the middle of a probe)."""
    with contextlib.suppress(OSError):
        for entry in NETNS_DIR.iterdir():
            if not entry.name.startswith(NS_PREFIX):
                continue
            pid = entry.name[len(NS_PREFIX) :].split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
                _remove([entry.name])


# --- steps -----------------------------------------------------------------------------------


def _dhcp_step(probe: _Probe, mac: bytes, target: ProbeTarget) -> tuple[StepResult, Offer | None]:
    if not target.dhcp:
        return StepResult("dhcp", None, "DHCP is off on this network"), None
    started = time.monotonic()
    offer = _in(probe.inside, lambda: _discover(mac, DHCP_TIMEOUT))
    ms = round((time.monotonic() - started) * 1000)
    if offer is None:
        why = (
            f"no DHCP offer within {DHCP_TIMEOUT:g} s to a DHCPDISCOVER from a new port on "
            f"{target.bridge}"
        )
        return StepResult("dhcp", False, why, {"ms": ms}), None
    detail = f"offered {offer.address} by {offer.server} in {ms} ms"
    data = {"ms": ms, "offer": str(offer.address), "server": str(offer.server)}
    return StepResult("dhcp", True, detail, data), offer


def _discover(mac: bytes, timeout: float) -> Offer | None:
    """Broadcast a DHCPDISCOVER on eth0 and wait for the offer of that transaction."""
    xid = random.getrandbits(32)
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP)) as raw:
        raw.bind(("eth0", ETH_P_IP))
        raw.send(discover_frame(mac, xid))
        while (remaining := deadline - time.monotonic()) > 0:
            raw.settimeout(remaining)
            try:
                frame = raw.recv(65535)
            except TimeoutError:
                return None
            if (offer := parse_offer(frame, xid)) is not None:
                return offer
    return None


def _dns_step(probe: _Probe, offer: Offer, target: ProbeTarget) -> StepResult:
    server = str(offer.dns_servers[0]) if offer.dns_servers else target.gateway
    query = dns.message.make_query("version.bind", "TXT", "CH")
    started = time.monotonic()
    try:
        answer = _in(probe.inside, lambda: dns.query.udp(query, server, timeout=DNS_TIMEOUT))
    except (dns.exception.DNSException, OSError) as exc:
        why = str(exc) or type(exc).__name__
        return StepResult("dns", False, f"no DNS answer from {server} within "
                          f"{DNS_TIMEOUT:g} s: {why}", {"server": server})  # fmt: skip
    ms = round((time.monotonic() - started) * 1000)
    rcode = dns.rcode.to_text(answer.rcode())
    detail = f"{server} answered a DNS query ({rcode}) in {ms} ms"
    return StepResult("dns", True, detail, {"server": server, "rcode": rcode, "ms": ms})


def _forward_step(probe: _Probe) -> StepResult:
    with IPRoute() as ipr:
        link = _free_link_net(ipr)
        _plug_outside(ipr, probe, link)
    host, outside = (IPv4Interface(f"{a}/{link.prefixlen}") for a in list(link.hosts())[:2])
    reply = _in(
        probe.inside,
        lambda: icmplib.ping(
            str(outside.ip), count=PING_COUNT, interval=0.2, timeout=PING_TIMEOUT, privileged=True
        ),
    )
    data = {
        "target": str(outside.ip),
        "sent": reply.packets_sent,
        "received": reply.packets_received,
    }
    if not reply.is_alive:
        return StepResult(
            "forward",
            False,
            f"no reply to {reply.packets_sent} ICMP echo requests forwarded by the host from "
            f"the network to a probe interface ({outside.ip}, behind {host.ip})",
            data,
        )
    detail = f"forwarded to {outside.ip} and back, {reply.avg_rtt:.2f} ms round trip"
    return StepResult("forward", True, detail, {**data, "rtt_ms": reply.avg_rtt})


def _free_link_net(ipr: IPRoute) -> IPv4Network:
    """A /30 of OUTSIDE_POOL that no address or route of this namespace overlaps."""
    used = [ipaddress.ip_network(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}", strict=False)
            for a in ipr.get_addr(family=socket.AF_INET)]  # fmt: skip
    for route in ipr.get_routes(family=socket.AF_INET):
        dst = route.get_attr("RTA_DST")
        if dst:
            used.append(ipaddress.ip_network(f"{dst}/{route['dst_len']}", strict=False))
    for _ in range(64):
        offset = random.randrange(OUTSIDE_POOL.num_addresses // 4) * 4
        candidate = IPv4Network(f"{OUTSIDE_POOL.network_address + offset}/30")
        if not any(candidate.overlaps(net) for net in used if net.prefixlen > 0):
            return candidate
    raise OSError(f"no free /30 in {OUTSIDE_POOL} for the forwarding probe")


def _plug_outside(ipr: IPRoute, probe: _Probe, link: IPv4Network) -> None:
    host, outside = list(link.hosts())[:2]
    _make_netns(probe, probe.outside)
    ipr.link(
        "add", ifname=probe.uplink, kind="veth", peer={"ifname": "eth0", "net_ns_fd": probe.outside}
    )
    index = _index(ipr, probe.uplink)
    ipr.link("set", index=index, ifalias=f"{ALIAS}outside", state="up")
    ipr.addr("add", index=index, address=str(host), prefixlen=link.prefixlen)

    def configure() -> None:
        with IPRoute() as own:
            eth0 = _index(own, "eth0")
            own.link("set", index=eth0, state="up")
            own.addr("add", index=eth0, address=str(outside), prefixlen=link.prefixlen)
            # replies to an un-masqueraded guest address go back the same way
            own.route("add", dst="0.0.0.0/0", gateway=str(host))

    _in(probe.outside, configure)
