"""Entering a named network namespace for the calling thread only.

setns(2) changes the namespace of the calling thread. The daemon enters KVMNETD_NETNS in
its main thread before any other thread exists (all threads inherit it); in-process tests
instead give each dedicated host thread (supervisor, link monitor) the namespace to enter.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from pyroute2 import netns as _netns

T = TypeVar("T")


def enter_for_this_thread(name: str | None) -> None:
    """Move the calling thread into network namespace `name` (no-op for None)."""
    if name:
        _netns.setns(name, flags=0)


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
