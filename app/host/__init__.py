"""The only layer with side effects on the host: netlink, nftables, qemu, dnsmasq.

pyroute2 runs some calls (namespace creation, sockets in another namespace) in short-lived
forked children and stops them with SIGTERM. A child that kept the daemon's asyncio signal
wake-up would forward that SIGTERM to the daemon and shut it down; children must use the
default SIGTERM disposition instead.
"""

from pyroute2 import config as _pyroute2_config

_pyroute2_config.disable_mp_signal = True
