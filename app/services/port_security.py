"""Anti-spoofing of a new VM NIC (Neutron's port_security_enabled): what the API's null
means (`default_port_security`, the one place that decides it), where it can apply, and the
stored, resolved values (never null in the database). The rules themselves are planned in
app.domain.port_security and loaded by the network worker."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from app.db.models import Tap, VmNic
from app.db.repositories import PortRepository
from app.db.session import Session
from app.domain import port_security as ps
from app.domain.errors import InvalidInput
from app.domain.nics import HostLink, nic_driver
from app.domain.tenancy import DEFAULT_PROJECT_ID


def default_port_security(project_id: str) -> bool:
    """Whether a NIC created with `port_security` null (or omitted) is protected: on in
    tenants' projects (every project but `default`, whose guests are the operator's own,
    as on a host without projects); only ever on where it can apply (`resolve` checks
    `refusal` first)."""
    return project_id != DEFAULT_PROJECT_ID


def refusal(session: Session, nic: VmNic) -> str | None:
    """Why anti-spoofing cannot apply to this NIC (None: it can). Its rules live in our
    nftables `bridge` table, so they see only frames a tap brings into a Linux bridge."""
    driver = nic_driver(nic.backend)
    if driver.host_link is HostLink.VM_MACVTAP:
        return (
            "port_security needs a NIC whose frames enter a bridge through a tap; a macvtap's "
            "go straight to its parent interface"
        )
    if driver.host_link is HostLink.VF:
        return (
            "port_security needs a NIC whose frames enter a bridge through a tap; an SR-IOV "
            "VF's go through the NIC's own switch (its anti-spoofing is `spoof_check`)"
        )
    if driver.host_link is HostLink.NONE:
        return (
            f"port_security needs a NIC whose frames enter a bridge through a tap (the bridge "
            f"backend, or a tap resource on a bridge); the {nic.backend} backend has no tap"
        )
    if nic.model is None:
        return "port_security is for a guest NIC; a hub join (model null) carries a hub's frames"
    if nic.vlan_tagged:
        return (
            "port_security is for untagged NICs; a trunk NIC (vlan_tagged) carries 802.1Q "
            "frames of several VLANs"
        )
    if driver.host_link is HostLink.TAP and nic.tap_id is not None:
        tap = session.get(Tap, nic.tap_id)
        if tap is not None and tap.bridge_id is None:
            return (
                f"port_security needs the tap on a bridge; tap {tap.name!r} is routed (attach "
                "it to a bridge first)"
            )
    return None


def resolve(
    session: Session,
    nic: VmNic,
    requested: bool | None,
    allowed: list[str] | None,
    project_id: str,
) -> None:
    """Store the NIC's resolved port_security and allowed_addresses (null: the default of
    the VM's project `project_id`); InvalidInput (422) where it was asked for and cannot
    apply, or for addresses without it."""
    why_not = refusal(session, nic)
    if requested is None:
        enabled = why_not is None and default_port_security(project_id)
    elif requested and why_not is not None:
        raise InvalidInput(why_not)
    else:
        enabled = requested
    if allowed and not enabled:
        raise InvalidInput(
            "allowed_addresses are addresses a NIC with port_security may send from: "
            "give port_security true (or leave allowed_addresses out)"
        )
    nic.port_security = enabled
    nic.allowed_addresses = list(allowed or [])


def observed_states(
    session: Session, nics: Sequence[VmNic], table: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """NIC id -> its PortSecurityState (the API's shape) for the protected NICs, from our
    bridge table as read now (`table`: HostInspector.port_security_table's answer)."""
    listing = table.get("listing")
    live = ps.read_table(listing) if listing is not None else None
    states: dict[str, dict[str, Any]] = {}
    for nic in nics:
        if not nic.port_security or nic.tap_name is None:
            continue
        reason = nic.port_security_reason
        enforced = False
        counted: dict[str, list[int]] = {}
        if live is None:
            reason = reason or table.get("error") or "our nftables bridge table does not exist"
        else:
            counted = ps.dropped(live, nic.tap_name)
            try:
                wanted = ps.port_rules(
                    nic.tap_name,
                    nic.mac,
                    [_fixed_ipv4(session, nic), nic.observed_ipv4],
                    [str(a) for a in nic.allowed_addresses or []],
                )
            except ValueError:
                wanted = None
            enforced = wanted is not None and ps.chain_matches(live, wanted)
            if not enforced and reason is None:
                reason = "its rules are not (yet) as planned: the network worker loads them"
            unbridged = _off_bridge(session, nic)
            if enforced and unbridged is not None:  # rules in place, but no bridge sees it
                enforced, reason = False, unbridged
        states[nic.id] = {
            "enforced": enforced,
            "reason": reason,
            "dropped": _counter([sum(c[i] for c in counted.values()) for i in (0, 1)]),
            "dropped_by": {why: _counter(c) for why, c in sorted(counted.items())},
        }
    return states


def _fixed_ipv4(session: Session, nic: VmNic) -> str | None:
    """The NIC's fixed address: its own, or the port's it plugs (the port backend)."""
    if nic.ipv4 is not None or not nic_driver(nic.backend).plugs_port:
        return nic.ipv4
    port = PortRepository(session).of_tap(nic.tap_id or "")
    return port.ipv4 if port is not None else None


def _counter(values: list[int]) -> dict[str, int]:
    return {"packets": values[0], "bytes": values[1]}


def _off_bridge(session: Session, nic: VmNic) -> str | None:
    """Why a NIC on a tap resource is not protected although its rules are loaded: its tap
    left its bridge (a routed tap's frames never cross our bridge table)."""
    if nic.tap_id is None:
        return None
    tap = session.get(Tap, nic.tap_id)
    if tap is None or tap.bridge_id is not None:
        return None
    return f"tap {tap.name!r} is on no bridge: its frames do not cross the bridge rules"
