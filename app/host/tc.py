"""Rate limits on a tap with tc, through pyroute2's IPRoute.tc (rtnetlink RTM_*QDISC and
RTM_*TFILTER; never the `tc` binary).

A NIC's limits (app.domain.rate_limits) become, on its host tap:
- towards the guest (ingress_kbps): the tap's root qdisc is a tbf (tc-tbf(8)), handle 1:;
- from the guest (egress_kbps): the tap's ingress qdisc (ffff:) with one u32 filter that
  matches every frame (`u32 match u32 0 0`: this kernel has no matchall classifier) and
  either polices it (tc-police(8), act_police) or, where the kernel lacks act_police,
  redirects it (tc-mirred(8), act_mirred) to an ifb device of ours whose root is a tbf.
  The ifb is named after the tap (app.domain.rate_limits.ifb_name) and marked by its
  ifalias; a link of that name that is not ours is never touched.

`police_available` tries the police action on a tap and removes the try: the method is
detected at run time, never assumed. `read_limits` reads it all back for the drift check;
`ensure_limits` makes the kernel hold exactly the limits asked (none: no tbf root, no
ingress qdisc, no ifb) and says what it changed.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.tcmsg.common import get_rate_parameters

from app.domain.rate_limits import Bucket, EgressMethod, RateLimit, ifb_mark, ifb_name
from app.host.netlink import LinkError

log = logging.getLogger(__name__)

TC_H_ROOT = 0xFFFFFFFF
TC_H_INGRESS = 0xFFFFFFF1  # the parent the ingress qdisc hangs on
ROOT_HANDLE = 0x00010000  # 1:
INGRESS_HANDLE = 0xFFFF0000  # ffff:
FILTER_PRIO = 1
PROBE_PRIO = 0xFFF0  # the police try (its qdisc is removed at once)
ETH_P_ALL = 0x0003  # `protocol all` (include/uapi/linux/if_ether.h)
MATCH_ALL = ["0x0/0x0+0"]  # u32 match u32 0 0 at 0
TBF_LATENCY_US = 50_000  # tbf's queue: 50 ms of traffic at the rate, on top of the bucket
# the largest packet a police action lets through: without it the kernel takes 255 cells of
# the rate table (about 2 KiB) and drops every GSO packet a guest's virtio NIC sends through
# the tap (net/sched/act_police.c; libvirt's virNetDevBandwidthSet passes `mtu 64kb` too)
POLICE_MTU = 65536


@dataclass(frozen=True)
class TokenBucket:
    """A bucket as the kernel holds it: rate in bytes/s and its size as tc's `buffer` (in
    psched ticks; tc_calc_xmittime of the burst at the rate)."""

    rate: int
    buffer: int


@dataclass(frozen=True)
class ObservedLimits:
    """What a tap holds now."""

    to_guest: TokenBucket | None  # its root tbf
    police: TokenBucket | None  # a police action on its ingress
    redirect_to: int | None  # the ifindex its ingress filter redirects to (mirred)
    ifb: TokenBucket | None  # the root tbf of its ifb (whatever redirects to it)


def wanted(bucket: Bucket) -> TokenBucket:
    """`bucket` as the kernel will hold it (pyroute2 computes tc's parameters)."""
    parms = get_rate_parameters(
        {"rate": bucket.rate_bytes, "burst": bucket.burst_bytes, "limit": 0}
    )
    return TokenBucket(rate=int(parms["rate"]), buffer=int(parms["buffer"]))


def burst_kib(bucket: TokenBucket) -> int:
    """The size in KiB of a kernel bucket (the inverse of tc's buffer, rounded: the ticks
    lose a few bytes)."""
    once = get_rate_parameters({"rate": bucket.rate, "burst": 1 << 20, "limit": 0})
    return round(bucket.buffer * 1024 / int(once["buffer"]))


def _error(what: str, exc: NetlinkError | OSError) -> LinkError:
    code = exc.code if isinstance(exc, NetlinkError) else exc.errno
    return LinkError(f"{what}: {exc}", code)


# ---- reading ------------------------------------------------------------------------------


def _qdiscs(ipr: IPRoute, index: int) -> list[Any]:
    return [q for q in ipr.get_qdiscs(index=index) if q["index"] == index]


def _tbf(qdisc: Any) -> TokenBucket | None:
    if qdisc.get_attr("TCA_KIND") != "tbf":
        return None
    parms = qdisc.get_attr("TCA_OPTIONS").get_attr("TCA_TBF_PARMS")
    return TokenBucket(rate=int(parms["rate"]), buffer=int(parms["buffer"]))


def root_tbf(ipr: IPRoute, index: int) -> TokenBucket | None:
    for qdisc in _qdiscs(ipr, index):
        if qdisc["parent"] == TC_H_ROOT:
            return _tbf(qdisc)
    return None


def _has_ingress(ipr: IPRoute, index: int) -> bool:
    return any(q["parent"] == TC_H_INGRESS for q in _qdiscs(ipr, index))


def _actions(ipr: IPRoute, index: int) -> list[tuple[str, Any]]:
    """(kind, options) of each action of the u32 filters on the tap's ingress."""
    found: list[tuple[str, Any]] = []
    for flt in ipr.get_filters(index=index, parent=INGRESS_HANDLE):
        options = flt.get_attr("TCA_OPTIONS")
        acts = options.get_attr("TCA_U32_ACT") if options is not None else None
        if acts is None:
            continue
        for name, act in acts["attrs"]:
            if name.startswith("TCA_ACT_PRIO_"):
                found.append((act.get_attr("TCA_ACT_KIND"), act.get_attr("TCA_ACT_OPTIONS")))
    return found


def read_limits(ipr: IPRoute, index: int, tap: str) -> ObservedLimits:
    """The tap's limits as the kernel holds them."""
    try:
        police = redirect = None
        if _has_ingress(ipr, index):
            for kind, options in _actions(ipr, index):
                if kind == "police" and options is not None:
                    tbf = options.get_attr("TCA_POLICE_TBF")
                    police = TokenBucket(rate=int(tbf["rate"]), buffer=int(tbf["burst"]))
                elif kind == "mirred" and options is not None:
                    redirect = int(options.get_attr("TCA_MIRRED_PARMS")["ifindex"])
        ifb = _ifb_index(ipr, tap)
        return ObservedLimits(
            to_guest=root_tbf(ipr, index),
            police=police,
            redirect_to=redirect,
            ifb=root_tbf(ipr, ifb) if ifb is not None else None,
        )
    except (NetlinkError, OSError) as exc:
        raise _error(f"reading tc of {tap}", exc) from exc


def _ifb_index(ipr: IPRoute, tap: str) -> int | None:
    """Our ifb of `tap`; LinkError when a link of its name is not ours."""
    found = ipr.link("get", ifname=ifb_name(tap)) if _exists(ipr, ifb_name(tap)) else None
    if not found:
        return None
    alias = found[0].get_attr("IFLA_IFALIAS")
    if alias != ifb_mark(tap):
        raise LinkError(f"{ifb_name(tap)} exists and is not ours (ifalias {alias!r})", errno.EEXIST)
    return int(found[0]["index"])


def _exists(ipr: IPRoute, name: str) -> bool:
    return bool(ipr.link_lookup(ifname=name))


# ---- detecting ----------------------------------------------------------------------------


def police_available(ipr: IPRoute, index: int) -> tuple[bool, str | None]:
    """Whether the kernel takes a police action (act_police) on tap `index`'s ingress: tried
    with a filter on a fresh ingress qdisc, which is removed again either way (ensure_limits
    makes what the NIC needs). (False, the kernel's answer) when it does not."""
    try:
        _clear_ingress(ipr, index)
        ipr.tc("add", "ingress", index, INGRESS_HANDLE)
    except NetlinkError as exc:
        return False, f"no ingress qdisc: {exc}"
    try:
        ipr.tc(
            "add-filter",
            "u32",
            index,
            parent=INGRESS_HANDLE,
            prio=PROBE_PRIO,
            protocol=ETH_P_ALL,
            keys=MATCH_ALL,
            target=0x10001,
            action=[
                {
                    "kind": "police",
                    "rate": 125_000,
                    "burst": 65536,
                    "mtu": POLICE_MTU,
                    "action": "drop",
                }
            ],
        )
    except NetlinkError as exc:
        answer = f"{os.strerror(exc.code)} (errno {exc.code})"
        return False, f"the kernel refused a police action: {answer}; no act_police"
    finally:
        try:
            _clear_ingress(ipr, index)  # the qdisc goes with the filter
        except NetlinkError as exc:
            log.warning("removing the police try on ifindex %d: %s", index, exc)
    return True, None


# ---- changing -----------------------------------------------------------------------------


def _set_root_tbf(ipr: IPRoute, index: int, bucket: Bucket) -> None:
    ipr.tc(
        "replace",
        "tbf",
        index,
        ROOT_HANDLE,
        rate=bucket.rate_bytes,
        burst=bucket.burst_bytes,
        latency=TBF_LATENCY_US,
    )


def _clear_root(ipr: IPRoute, index: int) -> None:
    try:
        ipr.tc("del", index=index, parent=TC_H_ROOT)
    except NetlinkError as exc:
        if exc.code not in (errno.ENOENT, errno.EINVAL):
            raise


def _clear_ingress(ipr: IPRoute, index: int) -> None:
    """The ingress qdisc goes with its filters."""
    try:
        ipr.tc("del", "ingress", index, INGRESS_HANDLE)
    except NetlinkError as exc:
        if exc.code not in (errno.ENOENT, errno.EINVAL):
            raise


def _ingress_filter(ipr: IPRoute, index: int, action: dict[str, Any]) -> None:
    """A fresh ingress qdisc with one filter for every frame, doing `action`."""
    _clear_ingress(ipr, index)
    ipr.tc("add", "ingress", index, INGRESS_HANDLE)
    ipr.tc(
        "add-filter",
        "u32",
        index,
        parent=INGRESS_HANDLE,
        prio=FILTER_PRIO,
        protocol=ETH_P_ALL,
        keys=MATCH_ALL,
        target=0x10001,
        action=[action],
    )


def _ensure_ifb(ipr: IPRoute, tap: str) -> int:
    """Our ifb of `tap`, up (created and marked when missing)."""
    index = _ifb_index(ipr, tap)
    name = ifb_name(tap)
    if index is None:
        ipr.link("add", ifname=name, kind="ifb")
        (index,) = ipr.link_lookup(ifname=name)
        try:
            ipr.link("set", index=index, ifalias=ifb_mark(tap))
        except NetlinkError:
            ipr.link("del", index=index)  # never leave an unmarked ifb behind
            raise
    ipr.link("set", index=index, state="up")
    return index


def remove_ifb(ipr: IPRoute, tap: str) -> None:
    """Our ifb of `tap`, if there is one, goes (a foreign link of its name stays)."""
    try:
        index = _ifb_index(ipr, tap)
        if index is not None:
            ipr.link("del", index=index)
    except LinkError as exc:
        log.warning("not removing %s: %s", ifb_name(tap), exc)
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:
            raise _error(f"removing {ifb_name(tap)}", exc) from exc


def ensure_limits(
    ipr: IPRoute, index: int, tap: str, limit: RateLimit, method: EgressMethod
) -> list[str]:
    """Make tap `index` (named `tap`) hold exactly `limit`, limiting traffic from the guest
    by `method`; returns what had to change (empty: it held them already). LinkError (with
    the kernel's errno) when the kernel refuses."""
    try:
        return _ensure(ipr, index, tap, limit, method)
    except (NetlinkError, OSError) as exc:
        raise _error(f"tc on {tap}", exc) from exc


def _ensure(
    ipr: IPRoute, index: int, tap: str, limit: RateLimit, method: EgressMethod
) -> list[str]:
    now = read_limits(ipr, index, tap)
    changed: list[str] = []
    to_guest = limit.to_guest
    if to_guest is None and now.to_guest is not None:
        _clear_root(ipr, index)
        changed.append("root tbf removed")
    elif to_guest is not None and now.to_guest != wanted(to_guest):
        _set_root_tbf(ipr, index, to_guest)
        changed.append(f"root tbf {to_guest.rate_kbps} kbit/s")
    changed += _ensure_from_guest(ipr, index, tap, limit.from_guest, method, now)
    return changed


def _ensure_from_guest(
    ipr: IPRoute,
    index: int,
    tap: str,
    bucket: Bucket | None,
    method: EgressMethod,
    now: ObservedLimits,
) -> list[str]:
    changed: list[str] = []
    no_ifb = bucket is None or method is EgressMethod.POLICE
    if no_ifb and _ifb_index(ipr, tap) is not None:
        remove_ifb(ipr, tap)
        changed.append("ifb removed")
    if bucket is None:
        if _has_ingress(ipr, index):
            _clear_ingress(ipr, index)
            changed.append("ingress qdisc removed")
        return changed
    if method is EgressMethod.POLICE:
        if now.police != wanted(bucket) or now.redirect_to is not None:
            police = {
                "kind": "police",
                "rate": bucket.rate_bytes,
                "burst": bucket.burst_bytes,
                "mtu": POLICE_MTU,
                "action": "drop",
            }
            _ingress_filter(ipr, index, police)
            changed.append(f"ingress police {bucket.rate_kbps} kbit/s")
        return changed
    ifb = _ensure_ifb(ipr, tap)
    if now.ifb != wanted(bucket):
        _set_root_tbf(ipr, ifb, bucket)
        changed.append(f"ifb tbf {bucket.rate_kbps} kbit/s")
    if now.redirect_to != ifb or now.police is not None:
        redirect = {"kind": "mirred", "direction": "egress", "action": "redirect", "ifindex": ifb}
        _ingress_filter(ipr, index, redirect)
        changed.append(f"ingress redirect to {ifb_name(tap)}")
    return changed
