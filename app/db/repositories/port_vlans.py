"""The VLANs of taps on a filtering trunk (NICs and taps on VLANs, trunk NICs): which tap
carries which VLAN ids with which flags. Filled in by the NIC/tap VLAN settings; until then
no tap is planned, so the membership the kernel gives taps is left as it is."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.domain.vlan_ports import Membership


def tap_port_vlans(session: Session, trunk_id: str) -> dict[str, dict[int, Membership]]:
    """Tap name -> VLAN id -> Membership, for the taps on trunk `trunk_id` that are on a
    VLAN (access ports: PVID + untagged) or carry several (trunk NICs)."""
    return {}
