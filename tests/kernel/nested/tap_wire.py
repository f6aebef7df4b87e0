"""A guest namespace wired to a tap, for nested tests: the process holds the tap as qemu would
(/dev/net/tun, TUNSETIFF IFF_TAP|IFF_NO_PI, Documentation/networking/tuntap.rst) and copies
every frame between it and a tap `eth0` it creates in the guest namespace. The guest namespace
then behaves like a VM's NIC on that tap: real tools run there (`busybox udhcpc`, `busybox
ping`), and what they send enters the daemon's tap as a guest's frames would.

Usage: ip netns exec TAP_NS python tap_wire.py TAP GUEST_NS [MAC]. Creates `eth0` (MAC if
given) in GUEST_NS, down; prints `ready` once both ends are held; runs until killed (eth0 goes
away with the process, since it is not persistent). A tap deleted under it (the daemon removed
it: a normal end of a guest's wire) ends it quietly, exit status 0, with one line on stderr.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import select
import struct
import subprocess
import sys

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI, IFF_MULTI_QUEUE = 0x0002, 0x1000, 0x0100
FRAME_MAX = 65536
CLONE_NEWNET = 0x40000000  # setns(2); os.setns is Python 3.12+


def open_tap(name: str) -> int:
    """A file descriptor on tap `name` in the current network namespace (made if absent, not
    persistent then). A multi-queue tap refuses a single-queue attach with EINVAL: retried as
    one more queue."""
    for extra in (0, IFF_MULTI_QUEUE):
        fd = os.open("/dev/net/tun", os.O_RDWR)
        try:
            fcntl.ioctl(
                fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI | extra)
            )
            return fd
        except OSError:
            os.close(fd)
            if extra:
                raise
    raise AssertionError("unreachable")


def enter_netns(name: str) -> None:
    """setns(2) into the named network namespace (`ip netns` keeps it at /run/netns/NAME)."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open(f"/run/netns/{name}", "rb") as ns:
        if libc.setns(ns.fileno(), CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns {name}: {os.strerror(error)}")


def wire(left: int, right: int) -> int:
    """Copy frames both ways until killed, or until one end's tap is deleted: then the
    descriptor of that end is returned. A read on a tap file whose device is gone fails with
    EBADFD (drivers/net/tun.c, tun_chr_read_iter: the file is detached from its device)."""
    peer = {left: right, right: left}
    while True:
        ready, _, _ = select.select([left, right], [], [])
        for fd in ready:
            try:
                frame = os.read(fd, FRAME_MAX)
            except OSError as exc:
                if exc.errno == errno.EBADFD:
                    return fd
                raise
            # the other end down (EIO): the frame is dropped, as a cable would
            with contextlib.suppress(OSError):
                os.write(peer[fd], frame)


def main(tap: str, guest_ns: str, mac: str | None) -> None:
    host_end = open_tap(tap)
    enter_netns(guest_ns)
    guest_end = open_tap("eth0")
    if mac is not None:
        argv = ["ip", "link", "set", "eth0", "address", mac]
        subprocess.run(argv, stdin=subprocess.DEVNULL, check=True, timeout=30)
    print("ready", flush=True)
    gone = wire(host_end, guest_end)
    name = f"{tap} (namespace of the daemon)" if gone == host_end else f"eth0 of {guest_ns}"
    print(f"tap_wire.py: {name} was deleted; the wire ends", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
