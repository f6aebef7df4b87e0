"""Link kind drivers on a real kernel: a kind the daemon does not ship (macvlan, stacked on a
veth) is added by registering its two driver halves only, and LinkOps and the planner create,
observe (IFLA_LINK decoded as the parent) and settle it without any other code knowing it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pyroute2 import IPRoute

from app.db.session import Database
from app.domain.links import (
    ActionKind,
    LinkDetails,
    LinkDriver,
    LinkSpec,
    changes_for_new_link,
    fingerprint,
    plan,
)
from app.domain.links import registered as domain_registered
from app.host.links import HostLinkDriver
from app.host.links import registered as host_registered
from app.host.netlink import LinkOps
from app.host.netns import call_in
from app.host.rtnl import RawLink
from tests.host.test_reconciler import add_bridge, add_tap, db, full_pass, tap_row
from tests.netns_tools import ip, links

__all__ = ["db"]  # the fixture, shared with test_reconciler

IFLA_MACVLAN_MODE = 1  # include/uapi/linux/if_link.h
MACVLAN_MODE_BRIDGE = 4


@dataclass(frozen=True)
class MacvlanDetails(LinkDetails):
    mode: int | None


class MacvlanDriver(LinkDriver):
    kind = "macvlan"  # type: ignore[assignment]
    kernel_kind = "macvlan"


class HostMacvlanDriver(HostLinkDriver):
    kind = "macvlan"  # type: ignore[assignment]
    kernel_kind = "macvlan"

    def create(self, ipr: IPRoute, spec: LinkSpec) -> None:
        (parent,) = ipr.link_lookup(ifname=spec.parent)
        ipr.link("add", ifname=spec.name, kind="macvlan", link=parent, macvlan_mode="bridge")

    def observe(self, link: RawLink) -> dict[str, Any]:
        return {"details": MacvlanDetails(link.info_u32(IFLA_MACVLAN_MODE))}


@pytest.fixture
def macvlan_kind() -> Iterator[None]:
    """Both halves registered for this test only, as a new kind's modules would."""
    with domain_registered(MacvlanDriver()), host_registered(HostMacvlanDriver()):
        yield


@pytest.mark.usefixtures("macvlan_kind")
def test_a_new_kind_is_created_observed_and_settled_through_its_drivers_only(netns: str) -> None:
    with IPRoute(netns=netns) as ipr:
        ipr.link("add", ifname="up0", kind="veth", peer="up0p")
        (parent_index,) = ipr.link_lookup(ifname="up0")
    spec = LinkSpec(id="mv-1", kind="macvlan", name="mv0", parent="up0", mtu=1400)  # type: ignore[arg-type]

    def reconcile() -> list[tuple[str, ActionKind]]:
        with LinkOps() as ops:
            (action,) = [a for a in plan([spec], ops.dump()) if a.name == "mv0"]
            if action.kind is ActionKind.CREATE:
                index = ops.create(spec)
                ops.apply(index, spec.name, changes_for_new_link(spec), spec.kind)
            return [(action.name, action.kind)]

    assert call_in(netns, reconcile) == [("mv0", ActionKind.CREATE)]
    kernel = links(netns)["mv0"]
    assert (kernel.kind, kernel.alias, kernel.mtu, kernel.up) == (
        "macvlan",
        "kvmnetd:macvlan:mv-1",
        1400,
        True,
    )

    def observe() -> Any:
        with LinkOps() as ops:
            return ops.get("mv0")

    seen = call_in(netns, observe)
    assert seen.parent_index == parent_index
    assert seen.details == MacvlanDetails(MACVLAN_MODE_BRIDGE)
    assert fingerprint(seen).kind_state == (MacvlanDetails(MACVLAN_MODE_BRIDGE),)
    assert call_in(netns, reconcile) == [("mv0", ActionKind.SETTLED)]


def test_bridges_and_taps_carry_no_parent(netns: str) -> None:
    """IFLA_LINK is only reported for a stacked link: ours have none, so their fingerprints
    stay what they were."""
    with IPRoute(netns=netns) as ipr:
        ipr.link("add", ifname="br0", kind="bridge")
        ipr.link("add", ifname="tap0", kind="tuntap", mode="tap")

    def dump() -> dict[str, Any]:
        with LinkOps() as ops:
            return {link.name: link for link in ops.dump()}

    seen = call_in(netns, dump)
    assert (seen["br0"].parent_index, seen["tap0"].parent_index) == (None, None)
    assert fingerprint(seen["br0"]).kind_state == (False, seen["br0"].forward_delay_cs)
    assert seen["tap0"].tun_type == 2


def test_a_tap_on_a_bridge_whose_name_a_foreign_link_holds_waits_untouched(
    db: Database, netns: str
) -> None:
    """The planner blocks a link whose dependency cannot be set up: the tap is not created
    and never joins the foreign bridge (before, it was enslaved to it). Once the name is
    free, the next full pass creates both, bridge first."""
    ip(netns, "link", "add", "br0", "type", "bridge")
    bridge_id = add_bridge(db, "br0")
    tap_id = add_tap(db, "tap1", bridge_id=bridge_id)
    full_pass(db, netns)
    kernel = links(netns)
    assert "tap1" not in kernel
    assert kernel["br0"].alias is None
    row = tap_row(db, tap_id)
    assert row.status == "error"
    assert row.status_reason is not None
    assert row.status_reason.startswith("depends on link 'br0', which cannot be set up")
    ip(netns, "link", "del", "br0")
    full_pass(db, netns)
    kernel = links(netns)
    assert kernel["tap1"].master == "br0"
    assert kernel["br0"].alias == f"kvmnetd:bridge:{bridge_id}"
    assert tap_row(db, tap_id).status == "active"
