"""Test helpers that read and change the kernel directly (pyroute2), independent of the code
under test, plus throwaway network namespaces named kvt-*."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from pyroute2 import IPRoute, netns

from app.host.netns import call_in

T = TypeVar("T")


@dataclass
class KernelLink:
    name: str
    index: int
    kind: str | None
    alias: str | None
    master: str | None
    up: bool
    mtu: int
    mac: str | None
    addresses: list[str] = field(default_factory=list)
    info: dict[str, object] = field(default_factory=dict)


def new_netns_name() -> str:
    return f"kvt-{uuid.uuid4().hex[:10]}"


@contextlib.contextmanager
def throwaway_netns() -> Iterator[str]:
    """A fresh namespace with lo up; removed afterwards (its links die with it), after
    killing what still runs in it (a dnsmasq or qemu the daemon left to survive restarts:
    everything in a namespace the test created was started by the test)."""
    name = new_netns_name()
    netns.create(name)
    try:
        with IPRoute(netns=name) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        yield name
    finally:
        kill_processes_in(name)
        netns.remove(name)


def processes_in(ns: str) -> list[int]:
    """Pids of the processes whose network namespace is `ns`."""
    target = os.stat(f"/run/netns/{ns}").st_ino
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if os.stat(entry / "ns" / "net").st_ino == target:
                    pids.append(int(entry.name))
    return pids


def kill_processes_in(ns: str) -> None:
    for pid in processes_in(ns):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def links(ns: str) -> dict[str, KernelLink]:
    """Every link of `ns` by name, as the kernel reports it now."""
    with IPRoute(netns=ns) as ipr:
        msgs = list(ipr.link("dump"))
        addrs: dict[int, list[str]] = {}
        for a in ipr.addr("dump"):
            addr = a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")
            addrs.setdefault(a["index"], []).append(f"{addr}/{a['prefixlen']}")
    names = {m["index"]: m.get_attr("IFLA_IFNAME") for m in msgs}
    result = {}
    for m in msgs:
        linkinfo = m.get_attr("IFLA_LINKINFO")
        data = linkinfo.get_attr("IFLA_INFO_DATA") if linkinfo else None
        info = dict(data["attrs"]) if data is not None else {}
        master = m.get_attr("IFLA_MASTER")
        name = m.get_attr("IFLA_IFNAME")
        result[name] = KernelLink(
            name=name,
            index=m["index"],
            kind=linkinfo.get_attr("IFLA_INFO_KIND") if linkinfo else None,
            alias=m.get_attr("IFLA_IFALIAS"),
            master=names.get(master) if master else None,
            up=bool(m["flags"] & 1),
            mtu=m.get_attr("IFLA_MTU"),
            mac=m.get_attr("IFLA_ADDRESS"),
            addresses=addrs.get(m["index"], []),
            info=info,
        )
    return result


def ip(ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `ip -n NS ...` (argv list, no shell) the way an admin would by hand."""
    return subprocess.run(
        ["ip", "-n", ns, *args], capture_output=True, text=True, check=True, timeout=30
    )


def in_netns(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command inside `ns` (argv list, no shell), e.g. `nft -j list ruleset`."""
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=check, timeout=30
    )


def nft_rules(ns: str) -> list[dict[str, object]] | None:
    """The rules of our table `inet kvmnetd` in `ns` as nft JSON, or None without the table."""
    result = in_netns(ns, "nft", "-j", "list", "table", "inet", "kvmnetd", check=False)
    if result.returncode != 0:
        return None
    items = json.loads(result.stdout)["nftables"]
    return [item["rule"] for item in items if "rule" in item]


def sysctl(ns: str, key: str) -> str:
    return in_netns(ns, "sysctl", "-n", key).stdout.strip()


def dns_query(ns: str, server: str, name: str, timeout: float = 2.0) -> str | None:
    """The first IPv4 address a DNS server in `ns` answers for `name` (None: no answer),
    asked with a hand-made A query from a socket opened inside the namespace."""

    def ask() -> str | None:
        query_id = 0x4B56
        header = struct.pack(">HHHHHH", query_id, 0x0100, 1, 0, 0, 0)
        qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(header + qname + struct.pack(">HH", 1, 1), (server, 53))
            reply = s.recv(1024)
        answers = struct.unpack(">H", reply[6:8])[0]
        if reply[3] & 0x0F or not answers:
            return None
        return socket.inet_ntoa(reply[-4:])  # A records are 4 bytes; ours come last

    return in_namespace(ns, ask)


def in_namespace(ns: str, fn: Callable[[], T]) -> T:
    """Run `fn` on a thread of its own that entered `ns` (sockets it opens stay in `ns`,
    whichever thread uses them later); its exception, if any, is raised here."""
    return call_in(ns, fn)
