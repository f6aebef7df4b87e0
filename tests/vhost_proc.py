"""What a process holds of vhost-net, read from /proc (the kernel's own view, no qemu API):
the descriptors of /dev/vhost-net and the `vhost-<pid>` worker threads (one per vhost device
qemu started; VHOST_SET_OWNER makes it). Used by tests/kernel/nested/test_vhost_daemon.py and
bench/vhost.py."""

from __future__ import annotations

import contextlib
from pathlib import Path

VHOST_NET = Path("/dev/vhost-net")


def vhost_fds(pid: int) -> list[int]:
    """The descriptor numbers at which the process holds /dev/vhost-net."""
    device = VHOST_NET.stat().st_rdev
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if fd.stat().st_rdev == device:
                found.append(int(fd.name))
    return sorted(found)


def vhost_threads(pid: int) -> list[int]:
    """The kernel threads named `vhost-<pid>` (one per vhost device qemu owns)."""
    found = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().strip() == f"vhost-{pid}":
                found.append(int(comm.parent.name))
    return found
