"""Test helpers that read and change the kernel directly (pyroute2), independent of the code
under test, plus throwaway network namespaces named kvt-*."""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from pyroute2 import IPRoute, netns


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
    """A fresh namespace with lo up; removed afterwards (its links die with it)."""
    name = new_netns_name()
    netns.create(name)
    try:
        with IPRoute(netns=name) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        yield name
    finally:
        netns.remove(name)


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
