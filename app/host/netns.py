"""Entering a named network namespace for the calling thread only, and its loopback.

setns(2) changes the namespace of the calling thread. The daemon enters KVMNETD_NETNS in
its main thread before any other thread exists (all threads inherit it); in-process tests
instead give each dedicated host thread (supervisor, link monitor) the namespace to enter.

A namespace made by `ip netns add` starts with `lo` down (ip-netns(8)), so nothing binds or
reaches 127.0.0.1 there: the daemon's TCP listener failed with EADDRNOTAVAIL. The daemon
owns the loopback of the namespace it was told to run in and brings it up
(`loopback_up`); it never does so in the namespace it was started in.

pyroute2 does two things in a forked child: `netns.create` (the capability probe's and the
path probe's scratch namespaces) and a socket in another namespace (`IPRoute(netns=...)`).
It waits for the child's answer `NETNS_CHILD_TIMEOUT` seconds (set on pyroute2's config when
app.host is imported), not pyroute2's own 2 s.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from pyroute2 import IPRoute
from pyroute2 import config as _pyroute2_config
from pyroute2 import netns as _netns

T = TypeVar("T")

NETNS_CHILD_TIMEOUT = 30.0
"""Seconds to wait for pyroute2's forked child to answer (`netns.create`, a socket opened in
another namespace). pyroute2's default, 2 s, is missed by a healthy child when the host is
loaded: forking the daemon's large process and running the child's Python then takes longer
(seen on the 2-core CI machine at load ~10, and in the kernel tier's ~12x slower nested
host: "TimeoutError: no response from the child pid"). A missed answer is not a fault of the
child but fails the operation: the capability probe reports nothing, an uplink's path probe
fails. The wait only guards against a child that hangs, which nothing here expects, so a
bound far above any load seen costs nothing in the normal case."""


def bound_child_waits() -> None:
    """Make pyroute2 wait NETNS_CHILD_TIMEOUT seconds for its forked children, both for one
    answer (`default_communicate_timeout`) and for a socket in another namespace, retries
    included (`default_create_socket_timeout`, pyroute2's own 10 s)."""
    _pyroute2_config.default_communicate_timeout = NETNS_CHILD_TIMEOUT
    _pyroute2_config.default_create_socket_timeout = NETNS_CHILD_TIMEOUT


def enter_for_this_thread(name: str | None) -> None:
    """Move the calling thread into network namespace `name` (no-op for None)."""
    if name:
        _netns.setns(name, flags=0)


IFF_UP = 0x1  # <linux/if.h>


def loopback_up() -> bool:
    """Bring `lo` of the calling thread's namespace up (`ip link set lo up`); whether it
    was down. The kernel gives it 127.0.0.1/8 and ::1 itself once it is up."""
    with IPRoute() as ipr:
        (index,) = ipr.link_lookup(ifname="lo")
        (link,) = ipr.get_links(index)
        if link["flags"] & IFF_UP:
            return False
        ipr.link("set", index=index, state="up")
        return True


def call_in(name: str | None, fn: Callable[[], T]) -> T:
    """fn() on a thread of its own that entered namespace `name` (sockets it opens stay in
    that namespace, whichever thread uses them later); its exception is raised here."""
    results: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            enter_for_this_thread(name)
            results.append(fn())
        except BaseException as exc:  # handed to the caller
            errors.append(exc)

    thread = threading.Thread(target=run, name=f"in-{name}", daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return results[0]
