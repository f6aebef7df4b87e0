"""Rate limits of a VM NIC (issue 13): what the fields mean, their bounds and defaults, and
the token bucket each direction gets in the kernel (pure: stdlib only).

Directions are named from the guest's view, as OpenStack's QoS bandwidth_limit rule does
(`direction: ingress | egress`, neutron-lib's qos constants) and as libvirt's <bandwidth>
does with other words (formatdomain.html: `inbound` = towards the guest, `outbound` = from
it):

- `ingress_kbps`: traffic towards the guest = libvirt's inbound `average` (which libvirt
  counts in kilobytes/s: ingress_kbps / 8) = Neutron's ingress `max_kbps`. It leaves the
  host through the NIC's tap, so a shaping qdisc (tbf, tc-tbf(8)) is the tap's root.
- `egress_kbps`: traffic from the guest = libvirt's outbound `average` = Neutron's egress
  `max_kbps`. It enters the host through the tap: policed on the tap's ingress (act_police,
  tc-police(8)) where the kernel has it, else redirected (act_mirred, tc-mirred(8)) to an
  ifb device whose root is a tbf (the recipe of tc-mirred(8) and ifb's own documentation).
- `burst_kib`: the bucket's size in KiB for both directions = libvirt's `burst` (KiB);
  Neutron's `max_burst_kbps` is in kilobits (burst_kib = max_burst_kbps * 1000 / 8 / 1024).

Rates are kbit/s with k = 1000 (as tc and Neutron count them); bursts are KiB (1024 bytes).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from app.domain.errors import InvalidInput

# kbit/s. 8 kbit/s = 1000 bytes/s; the top is tc's 32-bit rate in bytes/s (tc_ratespec.rate:
# 2^32 - 1 bytes/s is 34.3 Gbit/s; more needs the 64-bit rate attributes, not used here)
RATE_KBPS = (8, 34_000_000)
BURST_KIB = (2, 1_048_576)  # 2 KiB (one 1500-byte frame) to 1 GiB
# a bucket that holds more than this many seconds at its rate overflows the kernel's u32
# time count (psched ticks, 64 ns each on Linux: 2^32 * 64 ns = 274 s)
BURST_SECONDS_MAX = 256
DEFAULT_BURST_MS = 100  # default bucket: 100 ms at the rate ...
DEFAULT_BURST_MIN = 64 * 1024  # ... but at least 64 KiB: a full-size GSO frame from the guest
FRAME_OVERHEAD = 18  # Ethernet header and one 802.1Q tag on top of the MTU
DEFAULT_MTU = 1500
BYTES_PER_KBIT = 125  # 1000 bits / 8


class EgressMethod(enum.StrEnum):
    """How traffic from the guest (the tap's ingress) is limited on this host."""

    POLICE = "police"  # a u32 filter with a police action on the tap's ingress qdisc
    IFB = "ifb"  # a u32 filter that redirects it to an ifb device, shaped by a tbf there


@dataclass(frozen=True)
class Bucket:
    """One direction's token bucket: rate in bytes/s, size in bytes."""

    rate_bytes: int
    burst_bytes: int

    @property
    def rate_kbps(self) -> int:
        return self.rate_bytes // BYTES_PER_KBIT


def default_burst_bytes(rate_kbps: int) -> int:
    """100 ms at the rate, at least 64 KiB (DEFAULT_BURST_MS, DEFAULT_BURST_MIN)."""
    return max(rate_kbps * BYTES_PER_KBIT * DEFAULT_BURST_MS // 1000, DEFAULT_BURST_MIN)


@dataclass(frozen=True)
class RateLimit:
    """A NIC's limits; None: no limit in that direction (burst: the default)."""

    ingress_kbps: int | None = None
    egress_kbps: int | None = None
    burst_kib: int | None = None

    @property
    def limited(self) -> bool:
        return self.ingress_kbps is not None or self.egress_kbps is not None

    def _bucket(self, rate_kbps: int | None) -> Bucket | None:
        if rate_kbps is None:
            return None
        burst = default_burst_bytes(rate_kbps) if self.burst_kib is None else self.burst_kib * 1024
        return Bucket(rate_kbps * BYTES_PER_KBIT, burst)

    @property
    def to_guest(self) -> Bucket | None:
        """The tap's root tbf (ingress_kbps)."""
        return self._bucket(self.ingress_kbps)

    @property
    def from_guest(self) -> Bucket | None:
        """The police action or the ifb's tbf (egress_kbps)."""
        return self._bucket(self.egress_kbps)


def validate_rate_limit(limit: RateLimit, mtu: int | None = None) -> None:
    """InvalidInput unless each value is within its bounds, the burst holds one frame of the
    NIC's MTU (tc-tbf(8): a frame larger than the bucket is never sent), and the bucket
    drains within BURST_SECONDS_MAX at each rate."""
    for what, rate in (("ingress_kbps", limit.ingress_kbps), ("egress_kbps", limit.egress_kbps)):
        if rate is not None and (
            isinstance(rate, bool) or not RATE_KBPS[0] <= rate <= RATE_KBPS[1]
        ):
            raise InvalidInput(
                f"{what} must be between {RATE_KBPS[0]} and {RATE_KBPS[1]} kbit/s (got {rate})"
            )
    if limit.burst_kib is None:
        return
    low, high = BURST_KIB
    if isinstance(limit.burst_kib, bool) or not low <= limit.burst_kib <= high:
        raise InvalidInput(
            f"burst_kib must be between {low} and {high} KiB (got {limit.burst_kib})"
        )
    frame = (mtu or DEFAULT_MTU) + FRAME_OVERHEAD
    if limit.burst_kib * 1024 < frame:
        raise InvalidInput(
            f"burst_kib {limit.burst_kib} KiB is smaller than one {frame}-byte frame of the "
            "NIC's MTU: such frames would never pass"
        )
    for what, bucket in (("ingress_kbps", limit.to_guest), ("egress_kbps", limit.from_guest)):
        if bucket is not None and bucket.burst_bytes > bucket.rate_bytes * BURST_SECONDS_MAX:
            raise InvalidInput(
                f"burst_kib {limit.burst_kib} KiB lasts more than {BURST_SECONDS_MAX} s at "
                f"{what} {bucket.rate_kbps} kbit/s: give a smaller burst or a higher rate"
            )


def ifb_name(tap: str) -> str:
    """The ifb device that shapes traffic from the guest on tap `tap`: `i<tap>` (VM taps are
    at most 14 characters), a digest of the name for a longer one (IFNAMSIZ: 15)."""
    if len(tap) < 15:
        return f"i{tap}"
    digest = 0
    for char in tap.encode():  # FNV-1a, 32 bits: stable across runs (hash() is salted)
        digest = ((digest ^ char) * 0x01000193) & 0xFFFFFFFF
    return f"ikv{digest:08x}"


def ifb_mark(tap: str) -> str:
    """The ifalias that marks an ifb device as ours, shaping tap `tap`."""
    return f"kvmnetd:ifb:{tap}"
