"""The only layer with side effects on the host: netlink, nftables, qemu, dnsmasq.

pyroute2 runs some calls (namespace creation, sockets in another namespace) in short-lived
forked children and stops them with SIGTERM. A child that kept the daemon's asyncio signal
wake-up would forward that SIGTERM to the daemon and shut it down; children must use the
default SIGTERM disposition instead.
"""

import os as _os

from pyroute2 import config as _pyroute2_config

from app.host import netns as _netns

_pyroute2_config.disable_mp_signal = True
_netns.bound_child_waits()  # pyroute2's 2 s wait for its children fails under load


def _default_signals_in_child() -> None:
    # A forked child must neither act on the daemon's signals nor write them into the
    # daemon's asyncio wake-up socket (shared after fork).
    import signal

    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except ValueError:  # not the main thread of the child: nothing was installed there
        pass


_os.register_at_fork(after_in_child=_default_signals_in_child)
