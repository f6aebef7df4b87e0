"""Entering a named network namespace for the calling thread only.

setns(2) changes the namespace of the calling thread. The daemon enters KVMNETD_NETNS in
its main thread before any other thread exists (all threads inherit it); in-process tests
instead give each dedicated host thread (supervisor, link monitor) the namespace to enter.
"""

from __future__ import annotations

from pyroute2 import netns as _netns


def enter_for_this_thread(name: str | None) -> None:
    """Move the calling thread into network namespace `name` (no-op for None)."""
    if name:
        _netns.setns(name, flags=0)
