"""Rate limits where the kernel has act_police (Debian's kernel; this machine's lacks it, so
the host tests see the ifb method only): the police action is detected, used for traffic from
the guest, read back through pyroute2, repaired after a deletion, and swapped with the ifb
method both ways without leaving anything behind."""

from __future__ import annotations

from collections.abc import Callable

from pyroute2 import IPRoute

from app.domain.rate_limits import EgressMethod, RateLimit, ifb_name
from app.host import tc

TAP = "kvtpol0-0"


def test_police_is_detected_used_read_back_and_repaired(
    netns: str, modules: Callable[..., None]
) -> None:
    modules("tun", "ifb", "sch_tbf", "sch_ingress", "cls_u32", "act_police", "act_mirred")
    limit = RateLimit(ingress_kbps=10_000, egress_kbps=2_000, burst_kib=64)
    with IPRoute(netns=netns) as ipr:
        ipr.link("add", ifname=TAP, kind="tuntap", mode="tap", ifr={"no_pi": 1})
        (index,) = ipr.link_lookup(ifname=TAP)
        police, reason = tc.police_available(ipr, index)
        assert police is True, reason
        assert tc.ensure_limits(ipr, index, TAP, limit, EgressMethod.POLICE)
        held = tc.read_limits(ipr, index, TAP)
        assert held.police is not None and held.police.rate == 2_000 * 125
        assert tc.burst_kib(held.police) == 64
        assert held.to_guest is not None and held.to_guest.rate == 10_000 * 125
        assert held.redirect_to is None and held.ifb is None
        assert not ipr.link_lookup(ifname=ifb_name(TAP))
        assert tc.ensure_limits(ipr, index, TAP, limit, EgressMethod.POLICE) == []

        ipr.tc("del", "ingress", index, tc.INGRESS_HANDLE)  # drift: `tc qdisc del ... ingress`
        assert tc.read_limits(ipr, index, TAP).police is None
        repaired = tc.ensure_limits(ipr, index, TAP, limit, EgressMethod.POLICE)
        assert repaired == ["ingress police 2000 kbit/s"]
        assert tc.read_limits(ipr, index, TAP) == held

        # to the ifb method and back: the redirect replaces the police, then the ifb goes
        tc.ensure_limits(ipr, index, TAP, limit, EgressMethod.IFB)
        swapped = tc.read_limits(ipr, index, TAP)
        assert swapped.police is None and swapped.redirect_to is not None
        assert tc.ensure_limits(ipr, index, TAP, limit, EgressMethod.POLICE)
        assert tc.read_limits(ipr, index, TAP) == held
        assert not ipr.link_lookup(ifname=ifb_name(TAP))
