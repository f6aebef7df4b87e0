"""The path probe of a managed network (app.host.path_probe), as data: what is probed, what
each step found, and which firewall hooks can explain a failed step."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Step = Literal["dhcp", "dns", "forward"]

_TO_THE_HOST = (
    ("ip", "prerouting"), ("inet", "prerouting"), ("ip", "input"), ("inet", "input"),
    ("bridge", "prerouting"), ("bridge", "input"), ("netdev", "ingress"),
)  # fmt: skip
STEP_HOOKS: dict[str, tuple[tuple[str, str], ...]] = {
    # DHCP and DNS go to dnsmasq on the gateway: bridged in, then delivered locally
    "dhcp": _TO_THE_HOST,
    "dns": _TO_THE_HOST,
    # guest traffic bridged in, routed by the host, out of another interface
    "forward": (
        ("ip", "prerouting"), ("inet", "prerouting"), ("ip", "forward"), ("inet", "forward"),
        ("ip", "postrouting"), ("inet", "postrouting"),
        ("bridge", "prerouting"), ("bridge", "input"), ("netdev", "ingress"),
    ),
}  # fmt: skip
"""(nftables family, hook) pairs a packet of each step passes (nft(8), ADDRESS FAMILIES)."""


@dataclass(frozen=True)
class ProbeTarget:
    """A managed network as the probe needs it."""

    network_id: str
    network: str  # its name
    bridge: str | None  # kernel name of its bridge; None for a network on a routed tap
    gateway: str
    prefixlen: int
    dhcp: bool
    stp_forward_delay_s: float = 0.0  # 0 when the bridge runs no STP


@dataclass
class StepResult:
    """One step of a probe: ok True (passed), False (failed) or None (not run; `detail`
    says why)."""

    step: Step
    ok: bool | None
    detail: str
    data: dict[str, Any] = field(default_factory=dict)
