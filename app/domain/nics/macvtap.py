"""The `macvtap` backend: a macvtap link the VM worker makes for the NIC on a host interface
(`parent`, a host NIC or any Ethernet link), with the guest's MAC, whose character device
(/dev/tapN, N its ifindex) the daemon opens and hands qemu as a descriptor
(`-netdev tap,fd=N`, as libvirt's `<interface type='direct'>` does).

Modes are the kernel's (ip-link(8) `macvtap mode`, drivers/net/macvlan.c):
- bridge: macvtaps of one parent reach each other inside the kernel, and the parent's LAN;
  never the host's own address on the parent (frames from a macvtap leave through the
  parent's transmit path, never its receive path);
- vepa: everything goes out of the parent, an 802.1Qbg switch reflects it back;
- private: like vepa, but frames between macvtaps of one parent are dropped even when the
  switch reflects them;
- passthru: the one macvtap of the parent takes the whole parent (the kernel makes it
  promiscuous and the macvtap keeps the parent's MAC; a second one is refused).

The parent is refused (409) when it is absent, loopback, not Ethernet, one of kvmnetd's own
links (a bridge, tap or macvtap of ours), or a bridge port (its receive handler is the
bridge's: the kernel says EBUSY).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from app.domain.errors import Conflict, InvalidInput
from app.domain.names import validate_link_name
from app.domain.nics.registry import HostLink, NicClaims, register
from app.domain.nics.spec import NicSpec
from app.domain.nics.tap import TapNetdev

ARPHRD_ETHER = 1  # include/uapi/linux/if_arp.h
IFF_LOOPBACK = 0x8  # include/uapi/linux/if.h


class MacvtapMode(enum.StrEnum):
    """IFLA_MACVLAN_MODE as ip-link(8) names it."""

    BRIDGE = "bridge"
    VEPA = "vepa"
    PRIVATE = "private"
    PASSTHRU = "passthru"


def stored_macvtap(options: Mapping[str, Any]) -> tuple[str, MacvtapMode]:
    """(parent, mode) from a macvtap NIC's stored options (KeyError/ValueError when damaged)."""
    return str(options["parent"]), MacvtapMode(options["macvtap_mode"])


def macvtap_name(vm_id: str, index: int) -> str:
    """`mv<8 hex of the VM id>-<index>`: 13-14 characters, unique per VM and NIC."""
    return validate_link_name(f"mv{vm_id.replace('-', '')[:8]}-{index}")


@dataclass(frozen=True)
class ParentLink:
    """A host link as a macvtap's parent candidate, as netlink reports it."""

    name: str
    ifindex: int
    kind: str | None  # IFLA_INFO_KIND (None: a physical NIC)
    link_type: int  # ifi_type (ARPHRD_*)
    loopback: bool  # IFF_LOOPBACK
    master: str | None = None  # the bridge (or bond) it is a port of
    mark: str | None = None  # its ifalias when it carries kvmnetd's mark


def parent_refusal(name: str, link: ParentLink | None) -> str | None:
    """Why `name` cannot carry a macvtap (None: it can)."""
    if link is None:
        return f"parent {name!r}: no such interface on this host"
    if link.mark is not None:
        return f"parent {name!r} is one of kvmnetd's own links ({link.mark}), not a host NIC"
    if link.loopback:
        return f"parent {name!r} is a loopback interface: a macvtap needs an Ethernet link"
    if link.link_type != ARPHRD_ETHER:
        return (
            f"parent {name!r} is not an Ethernet link (link type {link.link_type}, kind "
            f"{link.kind}): a macvtap needs one"
        )
    if link.master is not None:
        return (
            f"parent {name!r} is a port of {link.master!r}: its frames belong to that "
            "master (the kernel refuses a macvtap on it); use the master or another NIC"
        )
    return None


def require_parent(name: str, link: ParentLink | None) -> None:
    """409 Conflict naming the reason when `link` cannot carry a macvtap."""
    refusal = parent_refusal(name, link)
    if refusal is not None:
        raise Conflict(refusal)


@register
class MacvtapDriver(TapNetdev):
    name: ClassVar[str] = "macvtap"
    host_link: ClassVar[HostLink] = HostLink.VM_MACVTAP
    option: ClassVar[str | None] = "parent"
    multiqueue: ClassVar[bool] = False  # one descriptor: /dev/tapN opened once

    def admit(self, nic: NicSpec, request: Mapping[str, Any], claims: NicClaims) -> NicSpec:
        """Claims the macvtap's name (checking the parent: 409 naming why it cannot be)."""
        parent = str(request["parent"])
        mode = MacvtapMode(request.get("macvtap_mode") or MacvtapMode.BRIDGE)
        link = claims.macvtap(parent)
        return replace(nic, tap=link, parent=parent, macvtap_mode=mode.value)

    def validate(self, nic: NicSpec) -> None:
        super().validate(nic)
        if nic.parent is None:
            raise InvalidInput("the macvtap backend needs `parent`")
        validate_link_name(nic.parent)
        if nic.macvtap_mode not in MacvtapMode._value2member_map_:
            modes = ", ".join(m.value for m in MacvtapMode)
            raise InvalidInput(f"macvtap_mode must be one of {modes}, not {nic.macvtap_mode!r}")

    def load(self, nic: NicSpec, options: Mapping[str, Any]) -> NicSpec:
        parent, mode = stored_macvtap(options)
        return replace(nic, parent=parent, macvtap_mode=mode.value)

    def dump(self, nic: NicSpec) -> dict[str, Any]:
        return {"parent": nic.parent, "macvtap_mode": nic.macvtap_mode}

    def present(self, options: Mapping[str, Any]) -> dict[str, Any]:
        parent, mode = stored_macvtap(options)
        return {"parent": parent, "macvtap_mode": mode.value}

    def netdev(
        self,
        netdev_id: str,
        nic: NicSpec,
        vhost_net: bool,
        fds: Sequence[int] | None = None,
        vhost_fds: Sequence[int] = (),
    ) -> str:
        """Only by descriptor: qemu's `ifname=` opens /dev/net/tun, never a macvtap."""
        if not fds:
            raise InvalidInput(f"NIC {nic.id}: a macvtap reaches qemu only as a descriptor")
        return super().netdev(netdev_id, nic, vhost_net, fds, vhost_fds)
