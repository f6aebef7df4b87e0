"""The one kernel setting kvmnetd changes: IPv4 forwarding, in the calling thread's network
namespace (net sysctls follow the namespace of the task that opens them)."""

from __future__ import annotations

from pathlib import Path

IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


def enable_ip_forwarding() -> bool:
    """Turns IPv4 forwarding on; True when it was off (OSError when it cannot be set)."""
    if IP_FORWARD.read_text().strip() == "1":
        return False
    IP_FORWARD.write_text("1\n")
    return True
