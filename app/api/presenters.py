"""Rows to API representations, and the response conventions of mutations."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import Response

from app.db.models import (
    Bridge,
    Network,
    Operation,
    PortForward,
    ResourceColumns,
    Tap,
    Uplink,
    Vm,
    VmNic,
)
from app.domain.uplinks import JournalError, NicConfig, describe, restore_steps
from app.schemas.host import DiagnosticCheck
from app.schemas.links import Bridge as BridgeOut
from app.schemas.links import BridgePort, UplinkSummary
from app.schemas.links import Tap as TapOut
from app.schemas.networks import DhcpOut, NatOut
from app.schemas.networks import Network as NetworkOut
from app.schemas.networks import PortForward as PortForwardOut
from app.schemas.operations import OperationOut
from app.schemas.uplinks import UplinkOut, UplinkPlan
from app.schemas.vms import Vm as VmOut


def _resource(row: ResourceColumns) -> dict[str, Any]:
    return dict(
        id=row.id,
        name=row.name,
        status=row.status,
        status_reason=row.status_reason,
        generation=row.generation,
        observed_generation=row.observed_generation,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _state(row: Bridge | Tap) -> dict[str, Any]:
    return dict(
        **_resource(row),
        mtu=row.mtu,
        mac=row.mac,
        addresses=list(row.addresses),
        ifindex=row.observed_ifindex,
        observed_mac=row.observed_mac,
    )


def bridge_out(
    row: Bridge, ports: list[dict[str, Any]] | None = None, uplink: Uplink | None = None
) -> BridgeOut:
    return BridgeOut(
        **_state(row),
        stp=row.stp,
        forward_delay=row.forward_delay_cs / 100.0,
        ports=[BridgePort(**p) for p in ports or []],
        uplink=UplinkSummary(interface=uplink.name, phase=uplink.phase, status=uplink.status)
        if uplink is not None
        else None,
    )


def tap_out(row: Tap) -> TapOut:
    return TapOut(
        **_state(row),
        bridge_id=row.bridge_id,
        owner_uid=row.owner_uid,
        owner_gid=row.owner_gid,
        multi_queue=row.multi_queue,
        vnet_hdr=row.vnet_hdr,
    )


def operation_out(op: Operation) -> OperationOut:
    return OperationOut.model_validate(op, from_attributes=True)


def mutation_headers(
    response: Response, collection: str, resource_id: str, operation: Operation | None
) -> None:
    response.headers["Location"] = f"/v1/{collection}/{resource_id}"
    if operation is not None:
        response.headers["Operation-Location"] = f"/v1/operations/{operation.id}"
        response.headers["X-Operation-Id"] = operation.id


VM_FIELDS = (
    "id",
    "name",
    "status",
    "status_reason",
    "generation",
    "observed_generation",
    "created_at",
    "updated_at",
    "vcpus",
    "memory_mib",
    "machine",
    "accelerator",
    "accelerator_used",
    "power_state",
    "restart_policy",
    "pid",
    "started_at",
    "exit_code",
    "restarts",
    "last_output",
)
NIC_FIELDS = (
    "model",
    "mac",
    "backend",
    "tap_name",
    "bridge_id",
    "tap_id",
    "queues",
    "vhost",
    "link_up",
    "network_id",
    "ipv4",
)


def vm_out(row: Vm, nics: Sequence[VmNic]) -> VmOut:
    fields = {name: getattr(row, name) for name in VM_FIELDS}
    fields["nics"] = [
        {
            "index": n.position,
            "hub": (n.options or {}).get("hub"),
            **{name: getattr(n, name) for name in NIC_FIELDS},
        }
        for n in nics
    ]
    return VmOut.model_validate(fields)


def network_out(row: Network, link: str | None) -> NetworkOut:
    return NetworkOut(
        **_resource(row),
        bridge_id=row.bridge_id,
        tap_id=row.tap_id,
        link=link,
        subnet=row.subnet,
        gateway=row.gateway,
        nat=NatOut(enabled=row.nat, out_interface=row.nat_interface, snat_address=row.snat_address),
        dhcp=DhcpOut(
            enabled=row.dhcp,
            range_start=row.range_start,
            range_end=row.range_end,
            lease_time=row.lease_seconds,
        ),
        domain=row.domain,
        dnsmasq_pid=row.dnsmasq_pid,
        restarts=row.restarts,
    )


def port_forward_out(row: PortForward, nic: VmNic | None) -> PortForwardOut:
    return PortForwardOut(
        **_resource(row),
        network_id=row.network_id,
        vm_id=nic.vm_id if nic else None,
        nic=nic.position if nic else None,
        target_address=nic.ipv4 if nic else None,
        protocol=row.protocol,
        listen_address=row.listen_address,
        port=row.port,
        end_port=row.end_port,
        target_port=row.target_port,
        description=row.description,
    )


def uplink_out(row: Uplink, live: dict[str, Any]) -> UplinkOut:
    return UplinkOut(
        **_resource(row),
        bridge_id=row.bridge_id,
        interface=row.name,
        present_as=live.get("present_as"),
        permanent_mac=live.get("permanent_mac") or row.permanent_mac,
        carrier=live.get("carrier"),
        probe_address=row.probe_address,
        probe_timeout=row.probe_timeout,
        take_mac=row.take_mac,
        dhcp=row.dhcp,
        phase=row.phase,
        moved=row.saved if isinstance(row.saved, dict) else None,
        steps=list(row.steps or []),
    )


def uplink_plan_out(
    plan: dict[str, Any], interface: str, bridge: str, probe: str | None
) -> UplinkPlan:
    if "error" in plan:
        return UplinkPlan(
            interface=interface,
            bridge=bridge,
            action="attach",
            steps=[],
            addresses=[],
            routes=[],
            probe_address=probe,
            dhcp_clients=[],
            refused=plan["error"],
        )
    nic = NicConfig.from_json(plan["nic"])
    target = probe or plan["gateway"]
    refused = plan["refused"] or (
        None if target else f"{interface} has no default gateway: name a probe_address"
    )
    return UplinkPlan(
        interface=interface,
        bridge=bridge,
        action="attach",
        steps=[*plan["steps"], f"probe {target} through {bridge}" if target else "no probe"],
        addresses=[a.cidr for a in nic.addresses],
        routes=[describe(r) for r in nic.routes],
        probe_address=target,
        dhcp_clients=list(nic.dhcp_clients),
        refused=refused,
    )


def uplink_restore_plan_out(row: Uplink, bridge: str) -> UplinkPlan:
    attached = row.phase in ("attached", "moving")
    try:
        nic = NicConfig.from_json(row.saved) if row.saved is not None and attached else None
    except JournalError as exc:
        return UplinkPlan(
            interface=row.name,
            bridge=bridge,
            action="detach",
            steps=[],
            addresses=[],
            routes=[],
            probe_address=None,
            dhcp_clients=[],
            refused=f"uplink journal: {exc}",
        )
    steps = restore_steps(nic, bridge, row.bridge_mac_before) if nic else []
    return UplinkPlan(
        interface=row.name,
        bridge=bridge,
        action="detach",
        steps=steps,
        addresses=[a.cidr for a in nic.addresses] if nic else [],
        routes=[describe(r) for r in nic.routes] if nic else [],
        probe_address=None,
        dhcp_clients=[],
        refused=None if nic else f"{row.name} is not attached: nothing to move back",
    )


def uplink_diagnostic(bridge: str, row: Uplink, live: dict[str, Any]) -> DiagnosticCheck:
    """One uplink as a diagnostic: an error when its NIC is gone or its move failed, a
    warning without carrier."""
    name = f"uplink {bridge}"
    data = {"interface": row.name, "phase": row.phase, "status": row.status, **live}
    if live.get("present_as") is None:
        return DiagnosticCheck(
            name=name, ok=False, severity="error", detail=f"{row.name} is gone", data=data
        )
    if row.status == "error":
        detail = f"{row.name} is not attached: {row.status_reason}"
        return DiagnosticCheck(name=name, ok=False, severity="error", detail=detail, data=data)
    if not live.get("carrier"):
        detail = f"{live['present_as']} has no carrier: the LAN is unreachable through {bridge}"
        return DiagnosticCheck(name=name, ok=False, severity="warning", detail=detail, data=data)
    detail = f"{live['present_as']} is {row.phase} to {bridge}, with carrier"
    return DiagnosticCheck(name=name, ok=True, severity="info", detail=detail, data=data)
