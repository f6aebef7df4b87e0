"""Rate limits on a tap (app.host.tc) against the real kernel in a kvt-* namespace: the
qdiscs, filters and ifb read back through pyroute2 (independently of app.host.tc's own
reader), a hand deletion repaired, and the throughput measured with a namespace wired to
the tap as a guest (tests/kernel/nested/tap_wire.py holds the tap as qemu would)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from app.domain.rate_limits import EgressMethod, RateLimit, ifb_mark, ifb_name
from app.host import tc
from app.host.capabilities import probe_kernel_features
from app.host.netlink import LinkError
from tests.kernel.nested.conftest import wired_guest
from tests.netns_tools import in_netns

METER = Path(__file__).with_name("tcp_meter.py")
TAP = "kvtrl0-0"
HOST_ADDRESS, GUEST_ADDRESS = "10.77.0.1", "10.77.0.2"


def kernel_view(ns: str, name: str) -> dict[str, Any]:
    """The tap's root qdisc (kind, rate in bytes/s, buffer), its ingress actions (kind,
    details) and its ifb (index, ifalias, root qdisc), read with plain pyroute2."""
    with IPRoute(netns=ns) as ipr:
        (index,) = ipr.link_lookup(ifname=name)
        view: dict[str, Any] = {"root": None, "ingress": [], "ifb": None}
        for qdisc in ipr.get_qdiscs(index=index):
            if qdisc["index"] != index:
                continue
            kind = qdisc.get_attr("TCA_KIND")
            if qdisc["parent"] == tc.TC_H_ROOT and kind == "tbf":
                parms = qdisc.get_attr("TCA_OPTIONS").get_attr("TCA_TBF_PARMS")
                view["root"] = (kind, parms["rate"], parms["buffer"])
        for flt in ipr.get_filters(index=index, parent=tc.INGRESS_HANDLE):
            options = flt.get_attr("TCA_OPTIONS")
            acts = options.get_attr("TCA_U32_ACT") if options else None
            for _, act in (acts or {"attrs": []})["attrs"]:
                kind = act.get_attr("TCA_ACT_KIND")
                opts = act.get_attr("TCA_ACT_OPTIONS")
                if kind == "mirred":
                    view["ingress"].append((kind, opts.get_attr("TCA_MIRRED_PARMS")["ifindex"]))
                elif kind == "police":
                    view["ingress"].append((kind, opts.get_attr("TCA_POLICE_TBF")["rate"]))
        found = ipr.link_lookup(ifname=ifb_name(name))
        if found:
            link = ipr.link("get", index=found[0])[0]
            root = [q for q in ipr.get_qdiscs(index=found[0]) if q["index"] == found[0]]
            tbf = [
                q.get_attr("TCA_OPTIONS").get_attr("TCA_TBF_PARMS")["rate"]
                for q in root
                if q.get_attr("TCA_KIND") == "tbf"
            ]
            view["ifb"] = (found[0], link.get_attr("IFLA_IFALIAS"), tbf)
        return view


@pytest.fixture
def wired(netns: str) -> Iterator[tuple[str, str]]:
    """(namespace, guest namespace): bridge br0 with 10.77.0.1/24, our tap on it, and a
    guest namespace wired to the tap with 10.77.0.2/24 on its eth0."""
    with IPRoute(netns=netns) as ipr:
        ipr.link("add", ifname="br0", kind="bridge")
        ipr.link("add", ifname=TAP, kind="tuntap", mode="tap", ifr={"no_pi": 1})
        (bridge,) = ipr.link_lookup(ifname="br0")
        (tap,) = ipr.link_lookup(ifname=TAP)
        ipr.link("set", index=tap, master=bridge, state="up")
        ipr.link("set", index=bridge, state="up")
        ipr.addr("add", index=bridge, address=HOST_ADDRESS, prefixlen=24)
    with wired_guest(netns, TAP) as guest:
        in_netns(guest, "ip", "addr", "add", f"{GUEST_ADDRESS}/24", "dev", "eth0")
        yield netns, guest


def method_here(ns: str) -> EgressMethod:
    with IPRoute(netns=ns) as ipr:
        (index,) = ipr.link_lookup(ifname=TAP)
        ok, _ = tc.police_available(ipr, index)
        tc.ensure_limits(ipr, index, TAP, RateLimit(), EgressMethod.IFB)  # the try's qdisc goes
    return EgressMethod.POLICE if ok else EgressMethod.IFB


def apply(ns: str, limit: RateLimit, method: EgressMethod) -> list[str]:
    with IPRoute(netns=ns) as ipr:
        (index,) = ipr.link_lookup(ifname=TAP)
        return tc.ensure_limits(ipr, index, TAP, limit, method)


def mbit_per_s(sender_ns: str, receiver_ns: str, address: str, seconds: float) -> float:
    """Mbit/s of one TCP connection from `sender_ns` to `address` in `receiver_ns`."""
    python = [sys.executable, "-I", "-S", str(METER)]
    receiver = subprocess.Popen(
        ["ip", "netns", "exec", receiver_ns, *python, "recv", address, "5001"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert receiver.stdout is not None
        assert receiver.stdout.readline().strip() == "ready"
        subprocess.run(
            ["ip", "netns", "exec", sender_ns, *python, "send", address, "5001", str(seconds)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            check=True,
            timeout=seconds + 30,
        )
        out, _ = receiver.communicate(timeout=30)
    finally:
        receiver.kill()
        receiver.wait(timeout=30)
    total, duration = out.split()
    return int(total) * 8 / float(duration) / 1e6


def test_limits_are_set_read_back_changed_repaired_and_removed(netns: str) -> None:
    with IPRoute(netns=netns) as ipr:
        ipr.link("add", ifname=TAP, kind="tuntap", mode="tap", ifr={"no_pi": 1})
        (index,) = ipr.link_lookup(ifname=TAP)
        police, reason = tc.police_available(ipr, index)
    # this kernel: act_police is missing, so the kernel's own refusal is the reason
    police_module = Path("/sys/module/act_police").exists()
    assert police is police_module or police, reason
    method = EgressMethod.POLICE if police else EgressMethod.IFB
    limit = RateLimit(ingress_kbps=10_000, egress_kbps=2_000, burst_kib=64)
    assert apply(netns, limit, method)  # it changed something
    view = kernel_view(netns, TAP)
    assert view["root"] is not None and view["root"][:2] == ("tbf", 10_000 * 125)
    with IPRoute(netns=netns) as ipr:
        observed = tc.read_limits(ipr, index, TAP)
    assert observed.to_guest is not None and tc.burst_kib(observed.to_guest) == 64
    if method is EgressMethod.IFB:
        ifb, alias, rates = view["ifb"]
        assert alias == ifb_mark(TAP) and rates == [2_000 * 125]
        assert view["ingress"] == [("mirred", ifb)]
        assert observed.ifb is not None and tc.burst_kib(observed.ifb) == 64
    else:
        assert view["ingress"] == [("police", 2_000 * 125)] and view["ifb"] is None
    assert apply(netns, limit, method) == []  # held: nothing to do

    # drift: removed by hand (`tc qdisc del dev TAP root` / `... ingress`), then repaired
    in_netns(netns, "tc", "qdisc", "del", "dev", TAP, "root")
    in_netns(netns, "tc", "qdisc", "del", "dev", TAP, "ingress")
    assert kernel_view(netns, TAP)["root"] is None and kernel_view(netns, TAP)["ingress"] == []
    repaired = apply(netns, limit, method)
    assert "root tbf 10000 kbit/s" in repaired and any("ingress" in r for r in repaired)
    assert kernel_view(netns, TAP) == view

    # a new rate replaces the old one; no limit towards the guest: no tbf root
    apply(netns, RateLimit(egress_kbps=4_000), method)
    view = kernel_view(netns, TAP)
    assert view["root"] is None
    if method is EgressMethod.IFB:
        assert view["ifb"][2] == [4_000 * 125]

    # no limits at all: no ingress qdisc, no ifb
    assert apply(netns, RateLimit(), method)
    assert kernel_view(netns, TAP) == {"root": None, "ingress": [], "ifb": None}


def test_a_foreign_link_with_the_ifb_name_is_never_touched(netns: str) -> None:
    with IPRoute(netns=netns) as ipr:
        ipr.link("add", ifname=TAP, kind="tuntap", mode="tap", ifr={"no_pi": 1})
        ipr.link("add", ifname=ifb_name(TAP), kind="ifb")
        (index,) = ipr.link_lookup(ifname=TAP)
        with pytest.raises(LinkError, match="not ours"):
            tc.ensure_limits(ipr, index, TAP, RateLimit(egress_kbps=1000), EgressMethod.IFB)
        tc.remove_ifb(ipr, TAP)
        assert ipr.link_lookup(ifname=ifb_name(TAP))


@pytest.mark.timeout(120)
def test_a_10_mbit_limit_moves_10_mbit_each_way_and_more_without(
    wired: tuple[str, str],
) -> None:
    ns, guest = wired
    method = method_here(ns)
    apply(ns, RateLimit(ingress_kbps=10_000, egress_kbps=10_000), method)
    towards = mbit_per_s(ns, guest, GUEST_ADDRESS, 3)
    away = mbit_per_s(guest, ns, HOST_ADDRESS, 3)
    apply(ns, RateLimit(), method)
    free_towards = mbit_per_s(ns, guest, GUEST_ADDRESS, 1.5)
    free_away = mbit_per_s(guest, ns, HOST_ADDRESS, 1.5)
    print(
        f"towards the guest {towards:.1f} Mbit/s limited, {free_towards:.1f} free; "
        f"from the guest {away:.1f} limited, {free_away:.1f} free ({method})"
    )
    assert 8 <= towards <= 12 and 8 <= away <= 12
    assert free_towards > 20 and free_away > 20


def test_the_probe_reports_how_this_kernel_limits_traffic_from_guests(netns: str) -> None:
    with IPRoute(netns=netns) as ipr:
        ipr.link("add", ifname=TAP, kind="tuntap", mode="tap", ifr={"no_pi": 1})
        (index,) = ipr.link_lookup(ifname=TAP)
        police, _ = tc.police_available(ipr, index)
    probed = probe_kernel_features()[1]
    assert probed["available"] is True
    assert probed["method"] == ("police" if police else "ifb"), probed
    assert (probed["reason"] is None) is police  # why not police, when not
