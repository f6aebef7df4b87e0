"""Read-only views of the host for the API: interfaces with counters (ifconfig), routes
(route -n), bridge ports (brctl show) and a bridge's MAC table (brctl showmacs).

Every view runs on the inspector's own thread, which entered the namespace the daemon
manages (when it is not the process's own): link views read through app.host.rtnl, the
others through short-lived pyroute2 sockets (which are bound to the thread that opens them).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import stat
import threading
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import IPRoute, NetlinkError

from app.domain import port_security
from app.domain.errors import Conflict, NotFound, Unavailable
from app.domain.links import MARK_PREFIX, LinkKind, parse_mark
from app.domain.nat_rules import drop_counter, network_chain
from app.domain.nics.macvtap import ParentLink
from app.domain.path_probe import ProbeTarget
from app.domain.sriov import PhysicalFunction
from app.domain.uplinks import attach_steps, dhcp_refusal
from app.host import nft, rtnl, uplink
from app.host.addresses import AddressReadError, HostPrefix, check_subnet_clashes, host_prefixes
from app.host.capabilities import ProbeCancelled, ProbeRunner, probe_capabilities
from app.host.diagnostics import check_paths, conf_file_under, diagnose
from app.host.dnsmasq import DnsmasqPaths, output_tail, read_leases
from app.host.macvtap import parent_link
from app.host.netns import enter_for_this_thread
from app.host.rtnl import RawLink
from app.host.sriov import SriovError, find_pf, physical_functions, restore_vf, set_num_vfs
from app.host.vlans import FeatureMissing, VlanError, VlanOps

T = TypeVar("T")
log = logging.getLogger(__name__)

NUD_PERMANENT = 0x80
IFF_UP = 0x1
COUNTERS = (
    "rx_packets",
    "rx_bytes",
    "rx_errors",
    "rx_dropped",
    "tx_packets",
    "tx_bytes",
    "tx_errors",
    "tx_dropped",
)
VM_MARK = f"{MARK_PREFIX}vm:"  # app.supervisor.vm_taps.tap_mark
RT_PROTO = {2: "kernel", 3: "boot", 4: "static", 16: "dhcp", 186: "bgp", 188: "ospf"}
RT_SCOPE = {0: "universe", 200: "site", 253: "link", 254: "host", 255: "nowhere"}


def _managed_by(alias: str | None) -> dict[str, str] | None:
    owner = parse_mark(alias)
    if owner is None and alias and alias.startswith(VM_MARK):  # a VM NIC's tap or macvtap
        return {"resource": "vm", "id": alias.removeprefix(VM_MARK)}
    return {"resource": owner[0].value, "id": owner[1]} if owner else None


def _port(link: RawLink) -> dict[str, Any]:
    """A bridge port: `tap_id` when it is one of our taps, `managed_by` when it is ours at
    all (a VLAN's 802.1Q sub-interface is a port of its per-VLAN bridge, marked by the VLAN)."""
    owner = parse_mark(link.alias)
    return {
        "name": link.name,
        "ifindex": link.index,
        "oper_state": link.oper_state,
        "tap_id": owner[1] if owner and owner[0] is LinkKind.TAP else None,
        "managed_by": _managed_by(link.alias),
        "isolated": bool(link.port_isolated),
    }


class LiveHostInspector:
    """Implements app.services.ports.HostInspector on the daemon's network namespace."""

    def __init__(
        self,
        netns: str | None = None,
        qemu_binary: str = "qemu-system-x86_64",
        probe_kernel: Path | None = None,
        run_dir: Path | None = None,
        state_dir: Path | None = None,
    ) -> None:
        self.netns = netns
        self.run_dir = run_dir
        self.state_dir = state_dir
        self.qemu_binary = qemu_binary
        self.probe_kernel = probe_kernel
        self._capabilities: dict[str, Any] | None = None
        self._capabilities_lock = threading.Lock()
        # the probe's helpers (qemu) and scratch files end with the daemon: RUN_DIR/probe
        self._probe = ProbeRunner(run_dir / "probe" if run_dir is not None else None)
        self._probe_thread: threading.Thread | None = None
        self._thread = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="host-inspector",
            initializer=enter_for_this_thread,
            initargs=(netns,),
        )

    def _on_inspector_thread(self, fn: Callable[[], T]) -> T:
        return self._thread.submit(fn).result()

    def start_probe(self) -> None:
        """Probe the capabilities in the background now (the first answer is then ready);
        scratch left in the work dir by an earlier daemon is removed first."""
        self._probe.remove_work()
        self._probe_thread = threading.Thread(
            target=self._probe_quietly, name="capability-probe", daemon=True
        )
        self._probe_thread.start()

    def _probe_quietly(self) -> None:
        try:
            self.capabilities()
        except Unavailable:
            log.debug("capability probe cancelled: the daemon is stopping")
        except Exception:
            log.exception("capability probe failed")

    def close(self, timeout: float = 5.0) -> None:
        """End the probe's helper process and remove its scratch files; the probe thread
        gets `timeout` seconds to notice (it ends as soon as its qemu is gone)."""
        self._probe.cancel()
        thread = self._probe_thread
        if thread is not None:
            thread.join(timeout)
        self._probe.remove_work()
        self._thread.shutdown(wait=False)

    def abort(self) -> None:
        """For a forced exit: end the probe's helper process and remove its scratch files
        at once, waiting for nothing (safe from a signal handler)."""
        self._probe.cancel()
        self._probe.remove_work()

    def bridge_ports(self, bridge: str) -> list[dict[str, Any]]:
        return self.ports_of([bridge])[bridge]

    def foreign_link(self, name: str) -> dict[str, Any] | None:
        """The link called `name` when it exists and carries no kvmnetd mark (eth0, lo, a
        bridge of libvirt's): {"name", "kind", "ifindex"}; None when there is none, or ours."""
        return self._on_inspector_thread(lambda: self._foreign_link(name))

    @staticmethod
    def _foreign_link(name: str) -> dict[str, Any] | None:
        try:  # the common case, a new name, costs one ioctl and no netlink socket
            index = socket.if_nametoindex(name)
        except OSError:
            return None
        try:
            with IPRoute() as ipr:
                (msg,) = ipr.link("get", index=index)
        except NetlinkError:  # gone meanwhile
            return None
        if parse_mark(msg.get_attr("IFLA_IFALIAS")) is not None:
            return None
        info = msg.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info else None
        return {"name": name, "kind": kind, "ifindex": msg["index"]}

    def sriov_pool(self) -> list[PhysicalFunction]:
        """The SR-IOV PFs and their VFs (app.host.sriov), each VF's settings read through
        netlink on its PF in the managed namespace."""

        def read() -> list[PhysicalFunction]:
            with IPRoute() as ipr:
                return physical_functions(ipr)

        return self._on_inspector_thread(read)

    def set_num_vfs(self, pf: str, num_vfs: int) -> None:
        """`sriov_numvfs` of PF `pf` (app.host.sriov.set_num_vfs); the new VFs get the
        settings of free ones (the PF's driver may give them others). SriovError on failure."""

        def change() -> None:
            found = find_pf(pf)
            if found is None:
                raise NotFound(f"{pf} is not an SR-IOV physical function on this host")
            try:
                set_num_vfs(found, num_vfs)
                with IPRoute() as ipr:
                    for index in range(num_vfs):
                        restore_vf(ipr, pf, index)
            except SriovError as exc:
                raise Conflict(f"the kernel refused: {exc}") from exc

        self._on_inspector_thread(change)

    def parent_link(self, name: str) -> ParentLink | None:
        """Link `name` as a macvtap parent candidate (app.host.macvtap); None: absent."""

        def read() -> ParentLink | None:
            with IPRoute() as ipr:
                return parent_link(ipr, name)

        return self._on_inspector_thread(read)

    def ports_of(self, bridges: list[str]) -> dict[str, list[dict[str, Any]]]:
        """Each bridge's ports, from one kernel-filtered dump per bridge."""
        return self._on_inspector_thread(lambda: {b: self._ports(b) for b in bridges})

    @staticmethod
    def _ports(bridge: str) -> list[dict[str, Any]]:
        try:
            index = socket.if_nametoindex(bridge)
        except OSError:
            return []
        return [_port(link) for link in rtnl.dump_links(master=index)]

    def fdb(self, bridge: str) -> list[dict[str, Any]]:
        return self.fdb_of([bridge])[bridge]

    def fdb_of(self, bridges: list[str]) -> dict[str, list[dict[str, Any]]]:
        """Each bridge's MAC table (a bridge that does not exist has none), through one
        socket and one link dump."""
        return self._on_inspector_thread(lambda: self._fdb(bridges))

    def bridge_vlans(self, bridge: str) -> dict[str, Any]:
        """`bridge -j vlan show` of one bridge: {"filtering", "default_pvid", "reason",
        "ports": {port: [{"vid", "pvid", "untagged"}]}}. A kernel without VLAN filtering
        answers filtering None with the reason and no ports (app.host.vlans.FeatureMissing)."""
        return self._on_inspector_thread(lambda: _bridge_vlans(bridge))

    def interfaces(self) -> list[dict[str, Any]]:
        return self._on_inspector_thread(self._interfaces)

    def routes(self) -> list[dict[str, Any]]:
        return self._on_inspector_thread(self._routes)

    def host_prefixes(self) -> list[HostPrefix]:
        """The host's IPv4 addresses and connected routes (app.host.addresses); Unavailable
        when the kernel does not answer."""
        try:
            return self._on_inspector_thread(host_prefixes)
        except AddressReadError as exc:
            raise Unavailable(str(exc)) from None

    def subnet_clashes(
        self, networks: list[tuple[str, str]], own: dict[str, list[str]]
    ) -> dict[str, Any]:
        """The subnet_clashes diagnostic: (name, subnet) of each network against the host's
        addresses and connected routes that are not in `own` (link name -> ours)."""
        check = self._on_inspector_thread(lambda: check_subnet_clashes(networks, own))
        return dataclasses.asdict(check)

    def _fdb(self, bridges: list[str]) -> dict[str, list[dict[str, Any]]]:
        with IPRoute() as ipr:
            links = list(ipr.link("dump"))
            names = {m["index"]: m.get_attr("IFLA_IFNAME") for m in links}
            indexes = {name: index for index, name in names.items()}
            return {
                bridge: _fdb_entries(ipr, indexes[bridge], names) if bridge in indexes else []
                for bridge in bridges
            }

    def _interfaces(self) -> list[dict[str, Any]]:
        with IPRoute() as ipr:
            addresses: dict[int, list[str]] = defaultdict(list)
            for a in ipr.addr("dump"):
                addr = a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")
                addresses[a["index"]].append(f"{addr}/{a['prefixlen']}")
            links = list(ipr.link("dump"))
        names = {m["index"]: m.get_attr("IFLA_IFNAME") for m in links}
        result = []
        for m in links:
            info = m.get_attr("IFLA_LINKINFO")
            stats = m.get_attr("IFLA_STATS64") or m.get_attr("IFLA_STATS") or {}
            master = m.get_attr("IFLA_MASTER")
            result.append(
                {
                    "name": m.get_attr("IFLA_IFNAME"),
                    "ifindex": m["index"],
                    "kind": info.get_attr("IFLA_INFO_KIND") if info else None,
                    "admin_up": bool(m["flags"] & IFF_UP),
                    "oper_state": (m.get_attr("IFLA_OPERSTATE") or "UNKNOWN").lower(),
                    "carrier": bool(m.get_attr("IFLA_CARRIER")),
                    "mtu": m.get_attr("IFLA_MTU"),
                    "mac": m.get_attr("IFLA_ADDRESS"),
                    "master": names.get(master) if master else None,
                    "addresses": addresses.get(m["index"], []),
                    "counters": {k: int(stats.get(k, 0)) for k in COUNTERS},
                    "managed_by": _managed_by(m.get_attr("IFLA_IFALIAS")),
                }
            )
        return result

    def _routes(self) -> list[dict[str, Any]]:
        with IPRoute() as ipr:
            names = {m["index"]: m.get_attr("IFLA_IFNAME") for m in ipr.link("dump")}
            result = []
            for family in (socket.AF_INET, socket.AF_INET6):
                for r in ipr.route("dump", family=family):
                    table = r.get_attr("RTA_TABLE") or r["table"]
                    if table == 255:  # the local table is not what route -n shows
                        continue
                    dst = r.get_attr("RTA_DST")
                    default = "0.0.0.0" if family == socket.AF_INET else "::"
                    oif = r.get_attr("RTA_OIF")
                    result.append(
                        {
                            "family": "inet" if family == socket.AF_INET else "inet6",
                            "destination": f"{dst or default}/{r['dst_len']}",
                            "gateway": r.get_attr("RTA_GATEWAY"),
                            "device": names.get(oif) if oif else None,
                            "metric": r.get_attr("RTA_PRIORITY") or 0,
                            "protocol": RT_PROTO.get(r["proto"], str(r["proto"])),
                            "scope": RT_SCOPE.get(r["scope"], str(r["scope"])),
                            "table": table,
                            "source": r.get_attr("RTA_PREFSRC"),
                        }
                    )
        return result

    def vm_console(self, vm_id: str, offset: int, limit: int = 1 << 20) -> tuple[bytes, int]:
        """The console log from byte `offset` on (a negative offset counts back from the end;
        at most `limit` bytes) and the offset to continue from, for following it. A log that
        shrank (a new run of the VM) is read from its start."""
        if self.run_dir is None:
            return b"", 0
        path = self.run_dir / "vms" / vm_id / "console.log"
        # the run directory belongs to the qemu user: never follow a link planted there (it
        # could point at any file root may read), never block on a FIFO
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:  # missing, or a link
            return b"", 0
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return b"", 0
        with os.fdopen(fd, "rb") as log:
            size = log.seek(0, 2)
            start = max(0, size + offset) if offset < 0 else (offset if offset <= size else 0)
            log.seek(start)
            data = log.read(limit)
        return data, start + len(data)

    def diagnostics(self, gateways: list[str]) -> list[dict[str, Any]]:
        """What would break NAT forwarding in the daemon's namespace (app.host.diagnostics);
        `gateways` are the managed networks' IPv4 gateways, where our dnsmasq serves DNS. Our
        dnsmasq processes run with --conf-file=<run_dir>/networks/<network id>/dnsmasq.conf."""
        own = conf_file_under(self.run_dir / "networks") if self.run_dir else None
        checks = self._on_inspector_thread(lambda: diagnose(gateways, own))
        return [dataclasses.asdict(check) for check in checks]

    def probe_paths(self, targets: list[ProbeTarget]) -> list[dict[str, Any]]:
        """Probe each managed network's path from a throwaway port (app.host.path_probe):
        DHCP offer, DNS answer, forwarding; a check `path:<network>` each. Runs beside the
        inspector thread (a probe takes seconds), from a thread in the daemon's namespace."""

        def probe() -> list[dict[str, Any]]:
            enter_for_this_thread(self.netns)
            return [dataclasses.asdict(check) for check in check_paths(targets)]

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="path-probe") as pool:
            return pool.submit(probe).result()

    def port_security_table(self) -> dict[str, Any]:
        """Our nftables `bridge kvmnetd` table with its counters (`nft -j list`): {"listing":
        the JSON objects, or None when the table does not exist; "error": why it could not be
        read, or None}."""

        def read() -> dict[str, Any]:
            try:
                listing = nft.list_table(port_security.FAMILY, port_security.TABLE)
            except nft.NftError as exc:
                return {"listing": None, "error": str(exc)}
            return {"listing": listing, "error": None}

        return self._on_inspector_thread(read)

    def leases(self, network_id: str) -> list[dict[str, Any]]:
        """The active DHCP leases of a managed network's dnsmasq (from its lease file)."""
        if self.run_dir is None or self.state_dir is None:
            return []
        paths = DnsmasqPaths.of(self.run_dir, self.state_dir, network_id)
        return [dataclasses.asdict(lease) for lease in read_leases(paths)]

    def uplink_view(self, interface: str, permanent_mac: str | None) -> dict[str, Any]:
        """The uplink NIC as the kernel shows it now: its current name (found by permanent MAC
        when renamed), carrier, and permanent MAC."""

        def read() -> dict[str, Any]:
            with IPRoute() as ipr:
                name = uplink.find_by_mac(ipr, permanent_mac) if permanent_mac else None
                facts = uplink.link_facts(ipr, name or interface)
            if facts is None:
                return {"present_as": None, "carrier": None, "permanent_mac": permanent_mac}
            return {
                "present_as": facts.name,
                "carrier": facts.carrier,
                "permanent_mac": facts.permanent_mac or permanent_mac,
            }

        return self._on_inspector_thread(read)

    def uplink_plan(self, interface: str, bridge: str, take_mac: bool, dhcp: str) -> dict[str, Any]:
        """A dry run of an attach: the NIC's configuration now and the steps that would move it
        (`take_mac`: whether the bridge would take the NIC's MAC)."""

        def plan() -> dict[str, Any]:
            with IPRoute() as ipr:
                try:
                    nic = uplink.uplink_candidate(ipr, interface)
                except uplink.UplinkError as exc:
                    return {"error": str(exc)}
            refusal = dhcp_refusal(nic) if dhcp == "refuse" else None
            return {
                "nic": nic.to_json(),
                "steps": attach_steps(nic, bridge, nic.mac if take_mac else None),
                "gateway": nic.gateway,
                "refused": refusal,
            }

        return self._on_inspector_thread(plan)

    def isolation_drops(self, network_id: str) -> tuple[int, int] | None:
        """(packets, bytes) the host dropped because the network's guests sent them to
        another project's managed network (app.domain.nat_rules); None when nothing of the
        network is isolated (one project only), or the counter cannot be read (logged)."""

        def read() -> tuple[int, int] | None:
            try:
                listing = nft.list_chain(network_chain(network_id))
            except nft.NftError as exc:
                log.warning("the isolation counter of network %s: %s", network_id, exc)
                return None
            return drop_counter(listing or [], network_id)

        return self._on_inspector_thread(read)

    def network_log(self, network_id: str, lines: int) -> str:
        """The last lines a managed network's dnsmasq printed."""
        if self.run_dir is None or self.state_dir is None:
            return ""
        return output_tail(DnsmasqPaths.of(self.run_dir, self.state_dir, network_id), lines)

    def capabilities(self) -> dict[str, Any]:
        with self._capabilities_lock:
            if self._capabilities is None:
                try:
                    self._capabilities = probe_capabilities(
                        self.qemu_binary, self.probe_kernel, self._probe
                    )
                except ProbeCancelled:
                    raise Unavailable(
                        "the daemon is stopping; capabilities were not probed"
                    ) from None
            return self._capabilities


def _fdb_entries(ipr: IPRoute, bridge_index: int, names: dict[int, str]) -> list[dict[str, Any]]:
    entries = []
    for msg in ipr.fdb("dump", master=bridge_index):
        port = msg["ifindex"]
        # the bridge's forwarding table only: not the ports' own (NTF_SELF) lists, not the
        # bridge device's entries
        if port == bridge_index or msg.get_attr("NDA_MASTER") != bridge_index:
            continue
        cache = msg.get_attr("NDA_CACHEINFO")
        is_local = bool(msg["state"] & NUD_PERMANENT)
        entries.append(
            {
                "mac": msg.get_attr("NDA_LLADDR"),
                "port": names.get(port, str(port)),
                "port_index": port,
                "is_local": is_local,
                "ageing_timer": (
                    None if is_local or cache is None else cache["ndm_updated"] / 100.0
                ),
                "vlan": msg.get_attr("NDA_VLAN"),
            }
        )
    return sorted(entries, key=lambda e: (e["port"], e["mac"]))


def _bridge_vlans(bridge: str) -> dict[str, Any]:
    view: dict[str, Any] = {"filtering": None, "default_pvid": None, "reason": None, "ports": {}}
    with VlanOps() as ops:
        try:
            options = ops.bridge_vlan_options(bridge)
            view.update(filtering=options.filtering, default_pvid=options.default_pvid)
            if options.filtering:
                view["ports"] = {
                    port: [dataclasses.asdict(m) for m in sorted(members.values())]
                    for port, members in ops.memberships(bridge).items()
                }
        except FeatureMissing as exc:
            view["reason"] = str(exc)
        except VlanError as exc:  # the bridge is gone meanwhile, or not a bridge
            view["reason"] = str(exc)
    return view
