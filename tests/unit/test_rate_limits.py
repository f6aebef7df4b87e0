"""The pure rules of a NIC's rate limits (app.domain.rate_limits): buckets, defaults, bounds
and the ifb's name."""

from __future__ import annotations

import pytest

from app.domain.errors import InvalidInput
from app.domain.rate_limits import (
    Bucket,
    RateLimit,
    default_burst_bytes,
    ifb_mark,
    ifb_name,
    validate_rate_limit,
)


def test_buckets_per_direction_with_the_default_or_the_given_burst() -> None:
    limit = RateLimit(ingress_kbps=10_000, egress_kbps=8)
    assert limit.to_guest == Bucket(1_250_000, 125_000)  # 100 ms at 10 Mbit/s
    assert limit.from_guest == Bucket(1000, 65536)  # at least 64 KiB
    assert RateLimit(egress_kbps=100, burst_kib=32).from_guest == Bucket(12_500, 32768)
    assert RateLimit(ingress_kbps=100).from_guest is None and not RateLimit().limited
    assert default_burst_bytes(1_000_000) == 12_500_000


@pytest.mark.parametrize(
    ("limit", "mtu", "words"),
    [
        (RateLimit(ingress_kbps=7), None, "between 8 and 34000000 kbit/s"),
        (RateLimit(egress_kbps=34_000_001), None, "egress_kbps"),
        (RateLimit(ingress_kbps=True), None, "ingress_kbps"),  # type: ignore[arg-type]
        (RateLimit(ingress_kbps=100, burst_kib=1), None, "between 2 and 1048576 KiB"),
        (RateLimit(ingress_kbps=100, burst_kib=8), 9000, "smaller than one 9018-byte frame"),
        (RateLimit(egress_kbps=8, burst_kib=300), None, "more than 256 s at egress_kbps 8"),
    ],
)
def test_limits_out_of_bounds_are_refused_with_the_reason(
    limit: RateLimit, mtu: int | None, words: str
) -> None:
    with pytest.raises(InvalidInput, match=words):
        validate_rate_limit(limit, mtu)


def test_limits_in_bounds_pass() -> None:
    validate_rate_limit(RateLimit(ingress_kbps=8, egress_kbps=34_000_000, burst_kib=2))
    validate_rate_limit(RateLimit(egress_kbps=8, burst_kib=250))  # 256000 bytes: 256 s
    validate_rate_limit(RateLimit(ingress_kbps=8))  # the 64 KiB default: 65.5 s


def test_the_ifb_is_named_after_its_tap_within_ifnamsiz() -> None:
    assert ifb_name("kv1234abcd-0") == "ikv1234abcd-0"
    long = ifb_name("abcdefghijklmno")
    assert len(long) == 11 and long.startswith("ikv") and long == ifb_name("abcdefghijklmno")
    assert long != ifb_name("abcdefghijklmnp")
    assert ifb_mark("kv1234abcd-0") == "kvmnetd:ifb:kv1234abcd-0"
