"""/dev/vhost-net opened for qemu (issue 13 item 1; app.domain.vhost says when a NIC uses it).

qemu runs as an unprivileged user and /dev/vhost-net is 0600 root where no udev rule opens it
up, so the daemon opens it, once per queue of each NIC that uses vhost-net, and hands qemu the
descriptors next to the tap's (`-netdev tap,fd=..,vhostfd=..`, or `fds=`/`vhostfds=` for
several queues; over QMP `getfd` then netdev_add's `vhostfd`/`vhostfds`), as libvirt does.
Each descriptor becomes one vhost device owned by qemu (VHOST_SET_OWNER, done by qemu), with
its kernel worker thread `vhost-<qemu pid>`."""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from app.host.errors import HostError

VHOST_NET_DEVICE = Path("/dev/vhost-net")


class VhostError(HostError):
    """/dev/vhost-net did not open (EMFILE/ENFILE are worth retrying soon)."""

    def __init__(self, message: str, code: int | None) -> None:
        super().__init__(message, transient=code in (errno.EMFILE, errno.ENFILE))
        self.code = code


def open_vhost_net(count: int, device: Path = VHOST_NET_DEVICE) -> list[int]:
    """`count` descriptors of `device` (close-on-exec: the launch passes them on by
    pass_fds). The caller closes them once qemu holds its own copies."""
    fds: list[int] = []
    try:
        for _ in range(count):
            fds.append(os.open(device, os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        close_all({"": fds})
        raise VhostError(f"opening {device}: {exc.strerror}", exc.errno) from exc
    return fds


def close_all(fds: Mapping[str, Sequence[int]]) -> None:
    """Close every descriptor of a NIC id -> descriptors map."""
    for nic_fds in fds.values():
        for fd in nic_fds:
            os.close(fd)
