"""macvtap links (drivers/net/macvtap.c; ip-link(8) `type macvtap`) through pyroute2 IPRoute,
and their character devices: the kernel gives each macvtap a /dev/tapN (N its ifindex),
which the daemon opens and hands qemu as a descriptor, as libvirt does.

Without udev (the test namespaces, a container) devtmpfs names the node `tapN` after the
ifindex in whichever namespace made it, so /dev/tapN may be missing, or be another
namespace's macvtap with the same ifindex. The node is trusted only when its device number
is the one sysfs gives the macvtap; otherwise the daemon makes its own node (mknod, 0600,
owned by the qemu user) in the VM's run directory. sysfs shows a namespace's links under
/sys/class/net only to a sysfs mounted in that namespace, so the device number is read from
/sys/dev/char, which lists every character device whatever its namespace, each a symlink to
`.../net/<name>/macvtap/tap<N>`.

Acts in the calling thread's network namespace.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from app.domain.links import MARK_PREFIX
from app.domain.nics.macvtap import IFF_LOOPBACK, MacvtapMode, ParentLink
from app.host.netlink import LinkError

SYS_DEV_CHAR = Path("/sys/dev/char")
SYS_CLASS_NET = Path("/sys/class/net")
DEV = Path("/dev")


def parent_link(ipr: IPRoute, name: str) -> ParentLink | None:
    """Link `name` as a macvtap parent candidate; None when there is none."""
    try:
        index = socket.if_nametoindex(name)
        (msg,) = ipr.link("get", index=index)
    except (OSError, NetlinkError):
        return None
    info = msg.get_attr("IFLA_LINKINFO")
    master = msg.get_attr("IFLA_MASTER")
    master_name = None
    if master:
        with contextlib.suppress(OSError):
            master_name = socket.if_indextoname(master)
    alias = msg.get_attr("IFLA_IFALIAS")
    return ParentLink(
        name=name,
        ifindex=msg["index"],
        kind=info.get_attr("IFLA_INFO_KIND") if info else None,
        link_type=msg["ifi_type"],
        loopback=bool(msg["flags"] & IFF_LOOPBACK),
        master=master_name or (str(master) if master else None),
        mark=alias if alias and alias.startswith(MARK_PREFIX) else None,
    )


def _sharing_refused(ipr: IPRoute, parent_index: int, mode: str) -> str:
    """Why the kernel says EINVAL when the parent is shared: passthru takes a parent that
    has no other macvlan/macvtap, and a parent in passthru takes no other one
    (drivers/net/macvlan.c, macvlan_common_newlink). "" when that is not the case."""
    others = []
    for msg in ipr.get_links():
        info = msg.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info else None
        if kind in ("macvtap", "macvlan") and msg.get_attr("IFLA_LINK") == parent_index:
            others.append(str(msg.get_attr("IFLA_IFNAME")))
    if not others:
        return ""
    if mode == MacvtapMode.PASSTHRU:
        return f" (passthru needs the parent to itself; it has {', '.join(sorted(others))})"
    return f" (the parent may be in passthru mode for {', '.join(sorted(others))})"


def create_macvtap(ipr: IPRoute, name: str, parent: str, mode: str, mac: str) -> int:
    """`ip link add link <parent> name <name> address <mac> type macvtap mode <mode>`; its
    ifindex. In passthru mode the macvtap keeps the parent's MAC (setting one would change
    the parent's: drivers/net/macvlan.c, macvlan_set_mac_address) and the kernel makes the
    parent promiscuous, so the guest's own MAC still arrives."""
    try:
        parent_index = socket.if_nametoindex(parent)
    except OSError:
        raise LinkError(
            f"creating macvtap {name}: parent {parent} does not exist", errno.ENODEV
        ) from None
    attrs: dict[str, str] = {} if mode == MacvtapMode.PASSTHRU else {"address": mac}
    try:
        ipr.link("add", ifname=name, kind="macvtap", link=parent_index, macvtap_mode=mode, **attrs)
    except NetlinkError as exc:
        why = _sharing_refused(ipr, parent_index, mode) if exc.code == errno.EINVAL else ""
        raise LinkError(f"creating macvtap {name} on {parent}: {exc}{why}", exc.code) from exc
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise LinkError(f"{name} vanished right after creation", errno.ENODEV) from None


def macvtap_device(name: str, index: int) -> int:
    """The device number (st_rdev) of macvtap `name`'s /dev/tap<index>; LinkError ENODEV
    when sysfs shows none."""
    own = SYS_CLASS_NET / name / "macvtap" / f"tap{index}" / "dev"
    with contextlib.suppress(OSError):
        major, minor = own.read_text().strip().split(":")
        return os.makedev(int(major), int(minor))
    tail = f"/net/{name}/macvtap/tap{index}"
    with contextlib.suppress(OSError):
        for entry in SYS_DEV_CHAR.iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(entry).endswith(tail):
                    major, minor = entry.name.split(":")
                    return os.makedev(int(major), int(minor))
    raise LinkError(f"macvtap {name}: sysfs shows no character device tap{index}", errno.ENODEV)


def device_node(name: str, node_dir: Path, owner: tuple[int, int] | None) -> tuple[Path, int]:
    """A node of macvtap `name`'s character device and its device number: /dev/tapN when it
    is that device, else one the daemon makes in `node_dir` (0600, owned by `owner`, the
    qemu user)."""
    try:
        index = socket.if_nametoindex(name)
    except OSError:
        raise LinkError(f"macvtap {name} does not exist", errno.ENODEV) from None
    device = macvtap_device(name, index)
    node = DEV / f"tap{index}"
    with contextlib.suppress(OSError):
        found = node.lstat()
        if stat.S_ISCHR(found.st_mode) and found.st_rdev == device:
            return node, device
    node = node_dir / f"tap{index}"
    try:
        node_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            node.unlink()
        os.mknod(node, stat.S_IFCHR | 0o600, device)
        if owner is not None:
            os.chown(node, *owner, follow_symlinks=False)
    except OSError as exc:
        what = f"making the device node {node} of macvtap {name}: {exc}"
        raise LinkError(what, exc.errno) from exc
    return node, device


def open_macvtap(name: str, node_dir: Path, owner: tuple[int, int] | None) -> int:
    """Macvtap `name`'s character device, opened read-write (qemu's `-netdev tap,fd=`). The
    caller closes it once qemu has it. `node_dir` may be the qemu user's: the node is opened
    without following links and must still be that device once open."""
    node, device = device_node(name, node_dir, owner)
    try:
        fd = os.open(node, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise LinkError(f"opening macvtap {name} ({node}): {exc}", exc.errno) from exc
    opened = os.fstat(fd)
    if not stat.S_ISCHR(opened.st_mode) or opened.st_rdev != device:
        os.close(fd)
        raise LinkError(f"opening macvtap {name}: {node} changed under us", errno.EAGAIN)
    return fd
