"""Netlink link notifications: tells the supervisor the moment a link changes or vanishes."""

from __future__ import annotations

import logging
import select
import threading
from collections.abc import Callable

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import RTMGRP_LINK

log = logging.getLogger(__name__)

IFF_UP = 0x1

LinkEventHandler = Callable[[str, str, str | None, int | None, bool], None]
"""(event 'new'|'del', link name, ifalias, master index, admin up)."""


class LinkMonitor:
    """Runs a thread that reads RTM_NEWLINK/RTM_DELLINK and calls `handler` for each."""

    def __init__(self, handler: LinkEventHandler, netns: str | None = None) -> None:
        self._handler = handler
        self._netns = netns
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ipr: IPRoute | None = None

    def start(self) -> None:
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(started,), name="link-monitor", daemon=True
        )
        self._thread.start()
        # subscribed before start() returns, so no change after it goes unseen
        started.wait(timeout=10)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._ipr is not None:
            self._ipr.close()

    def _run(self, started: threading.Event) -> None:
        # pyroute2's sync socket is bound to the thread that made it: make it here
        self._ipr = IPRoute(netns=self._netns) if self._netns else IPRoute()
        self._ipr.bind(groups=RTMGRP_LINK)
        started.set()
        fileno = self._ipr.fileno()
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([fileno], [], [], 0.5)
                if not ready:
                    continue
                for msg in self._ipr.get():
                    self._dispatch(msg)
            except Exception:  # keep watching; the periodic resync is the safety net
                if self._stop.is_set():
                    return
                log.exception("link monitor failed to read a notification")

    def _dispatch(self, msg: object) -> None:
        event = msg.get("event")  # type: ignore[attr-defined]
        if event not in ("RTM_NEWLINK", "RTM_DELLINK"):
            return
        name = msg.get_attr("IFLA_IFNAME")  # type: ignore[attr-defined]
        if not name:
            return
        self._handler(
            "del" if event == "RTM_DELLINK" else "new",
            name,
            msg.get_attr("IFLA_IFALIAS"),  # type: ignore[attr-defined]
            msg.get_attr("IFLA_MASTER") or None,  # type: ignore[attr-defined]
            bool(msg["flags"] & IFF_UP),  # type: ignore[index]
        )
