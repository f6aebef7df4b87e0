"""Rows to API representations, and the response conventions of mutations."""

from __future__ import annotations

import copy
import enum
import pwd
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from fastapi import Response
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from app.db.link_settings import stored_link_settings
from app.db.models import (
    Bridge,
    Network,
    Operation,
    Port,
    PortForward,
    ResourceColumns,
    Tap,
    Uplink,
    Vlan,
    Vm,
    VmNic,
)
from app.domain.nics import present_options
from app.domain.ports import port_status
from app.domain.uplinks import JournalError, NicConfig, describe, restore_steps
from app.domain.vlans import TrunkNames, VlanBackend, kernel_objects, l3_interface_name
from app.schemas.host import DiagnosticCheck
from app.schemas.links import Bridge as BridgeOut
from app.schemas.links import BridgePort, UplinkSummary
from app.schemas.links import Tap as TapOut
from app.schemas.networks import Network as NetworkOut
from app.schemas.networks import PortForward as PortForwardOut
from app.schemas.operations import OperationOut
from app.schemas.ports import Port as PortOut
from app.schemas.uplinks import UplinkOut, UplinkPlan
from app.schemas.vlans import Vlan as VlanOut
from app.schemas.vms import Vm as VmOut

M = TypeVar("M", bound=BaseModel)


def present(model: type[M], fields: dict[str, Any], deleted: bool = False) -> M:
    """`model` from a row's fields. A stored value the model refuses (a row written by hand
    or by an older version) shows as its field's default, and the resource as an error saying
    which stored values are wrong: such a row is still listed, read and deleted (never 500)."""
    try:
        return model.model_validate(fields)
    except ValidationError as err:
        errors = err.errors()
    repaired = copy.deepcopy(fields)
    wrong: list[str] = []
    for error in errors:
        loc = tuple(error["loc"])
        wrong.append(f"{'.'.join(map(str, loc))} is {_shown(error.get('input'))}")
        _repair(model, repaired, loc)
    if not deleted and "status_reason" in model.model_fields:
        repaired["status"] = "error"
        repaired["status_reason"] = "stored settings cannot be used: " + "; ".join(wrong)
    return model.model_validate(repaired)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _repair(model: type[BaseModel], data: dict[str, Any], loc: tuple[Any, ...]) -> None:
    """Put the fallback of the field at `loc` (a path through nested models and lists)."""
    name = loc[0] if loc else None
    field = model.model_fields.get(str(name)) if name is not None else None
    if field is None:
        raise ValueError(f"cannot repair {loc!r} of {model.__name__}")
    inner = data.get(str(name))
    annotation = field.annotation
    rest = loc[1:]
    nested = isinstance(annotation, type) and issubclass(annotation, BaseModel)
    if rest and nested and isinstance(inner, dict):
        return _repair(typing.cast(type[BaseModel], annotation), inner, rest)
    args = typing.get_args(annotation)
    if rest and isinstance(rest[0], int) and isinstance(inner, list) and args:
        item = args[0]
        element = inner[rest[0]]
        model_item = isinstance(item, type) and issubclass(item, BaseModel)
        if model_item and isinstance(element, dict) and rest[1:]:
            return _repair(item, element, rest[1:])
    data[str(name)] = _fallback(field)
    return None


def _fallback(field: FieldInfo) -> Any:
    """What a field shows when its stored value cannot be shown: its default, else null,
    else the first value of its type."""
    if not field.is_required():
        return field.get_default(call_default_factory=True)
    annotation = field.annotation
    # a union's or Literal's members; a generic like list[X] is itself the one option
    chooses = typing.get_origin(annotation) in (typing.Union, types.UnionType, typing.Literal)
    options = typing.get_args(annotation) if chooses else (annotation,)
    if type(None) in options:
        return None
    first = options[0]
    if typing.get_origin(annotation) is typing.Literal:
        return first
    if isinstance(first, type) and issubclass(first, enum.Enum):
        return next(iter(first)).value
    origin = typing.get_origin(first) or first
    for kind, value in ((bool, False), (int, 0), (float, 0.0), (str, ""), (list, []), (dict, {})):
        if origin is kind:
            return value
    raise ValueError(f"no fallback for {annotation!r}")


def _resource(row: ResourceColumns) -> dict[str, Any]:
    return dict(
        id=row.id,
        name=row.name,
        project_id=row.project_id,
        status=row.status,
        status_reason=row.status_reason,
        generation=row.generation,
        observed_generation=row.observed_generation,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _state(row: Bridge | Tap, settings: dict[str, Any], problem: str | None) -> dict[str, Any]:
    """A link's common fields. Stored settings that cannot be used (a row written by hand)
    show as their defaults, and the row as an error saying what is wrong with them."""
    state = _resource(row)
    if problem is not None and not row.deleted:
        state.update(status="error", status_reason=problem)
    return dict(
        **state,
        ifname=row.ifname,
        mtu=settings["mtu"],
        mac=settings["mac"],
        addresses=list(settings["addresses"]),
        ifindex=row.observed_ifindex,
        observed_mac=row.observed_mac,
        observed_mtu=row.observed_mtu,
        observed_oper_state=row.observed_oper_state,
    )


def bridge_out(
    row: Bridge, ports: list[dict[str, Any]] | None = None, uplink: Uplink | None = None
) -> BridgeOut:
    settings, problem = stored_link_settings(row)
    return BridgeOut(
        **_state(row, settings, problem),
        generated_mac=row.generated_mac,
        stp=settings["stp"],
        forward_delay=settings["forward_delay_cs"] / 100.0,
        ports=[BridgePort(**p) for p in ports or []],
        uplink=UplinkSummary(interface=uplink.name, phase=uplink.phase, status=uplink.status)
        if uplink is not None
        else None,
    )


def tap_out(row: Tap) -> TapOut:
    settings, problem = stored_link_settings(row)
    return TapOut(
        **_state(row, settings, problem),
        bridge_id=row.bridge_id,
        vlan_id=row.vlan_id,
        owner_uid=settings["owner_uid"],
        owner_gid=settings["owner_gid"],
        multi_queue=settings["multi_queue"],
        vnet_hdr=settings["vnet_hdr"],
        isolated=settings["isolated"],
        # a bad stored bool (a row edited by hand) shows as null, like no port
        observed_isolated=(row.observed_isolated if type(row.observed_isolated) is bool else None),
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
    "project_id",
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
    "id",
    "model",
    "mac",
    "backend",
    "tap_name",
    "bridge_id",
    "tap_id",
    "vlan_id",
    "vlan_tagged",
    "native_vlan",
    "queues",
    "mtu",
    "vhost",
    "link_up",
    "isolated",
    "network_id",
    "ipv4",
    "observed_ipv4",
    "address_status_reason",
    "port_security",
    "allowed_addresses",
    "ingress_kbps",
    "egress_kbps",
    "burst_kib",
)


def vm_out(row: Vm, nics: Sequence[VmNic], port_security: Mapping[str, Any] | None = None) -> VmOut:
    """`port_security`: NIC id -> its observed PortSecurityState (GET of one VM only)."""
    fields: dict[str, Any] = {name: getattr(row, name) for name in VM_FIELDS}
    fields["boot"] = row.boot if isinstance(row.boot, dict) else {}
    if row.run_as_uid is not None:
        gid = row.run_as_uid if row.run_as_gid is None else row.run_as_gid
        fields["run_as"] = {"uid": row.run_as_uid, "gid": gid}
    if row.pid is not None and row.observed_uid is not None and row.observed_gid is not None:
        fields["user"] = {
            "uid": row.observed_uid,
            "gid": row.observed_gid,
            "name": _user_name(row.observed_uid),
        }
    launched = row.launched_generation  # None: unknown (a qemu adopted from an older daemon)
    fields["restart_pending"] = (
        row.pid is not None and launched is not None and launched < row.spec_generation
    )
    fields["nics"] = [
        {
            "index": n.position,
            **present_options(n.backend, n.options),  # the backend driver's fields
            **{name: getattr(n, name) for name in NIC_FIELDS},
            "port_security_state": (port_security or {}).get(n.id),
            "offloads": {
                "checksum": n.offload_checksum,
                "tso": n.offload_tso,
                "gso": n.offload_gso,
            },
        }
        for n in nics
    ]
    return present(VmOut, fields, row.deleted)


def network_out(row: Network, link: str | None) -> NetworkOut:
    fields = dict(
        **_resource(row),
        bridge_id=row.bridge_id,
        tap_id=row.tap_id,
        vlan_id=row.vlan_id,
        link=link,
        subnet=row.subnet,
        gateway=row.gateway,
        nat=dict(enabled=row.nat, out_interface=row.nat_interface, snat_address=row.snat_address),
        dhcp=dict(
            enabled=row.dhcp,
            range_start=row.range_start,
            range_end=row.range_end,
            lease_time=row.lease_seconds,
        ),
        domain=row.domain,
        dns_nameservers=row.dns_nameservers,
        host_routes=row.host_routes,
        description=row.description,
        dnsmasq_pid=row.dnsmasq_pid,
        restarts=row.restarts,
    )
    return present(NetworkOut, fields, row.deleted)


def port_forward_out(row: PortForward, nic: VmNic | None) -> PortForwardOut:
    fields = dict(
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
    return present(PortForwardOut, fields, row.deleted)


def uplink_out(row: Uplink, live: dict[str, Any]) -> UplinkOut:
    fields = dict(
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
    return present(UplinkOut, fields, row.deleted)


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


def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _observed_by_object(stored: object) -> dict[tuple[str, str], dict[str, Any]]:
    """The supervisor's observed objects by (kind, name): a VID on the bridge's own port
    (bridge_vlan `br0`) is not the bridge. Entries that are no object with a string kind and
    name are skipped (a row written by hand)."""
    if not isinstance(stored, list):
        return {}
    return {
        (o["kind"], o["name"]): o
        for o in stored
        if isinstance(o, dict) and isinstance(o.get("name"), str) and isinstance(o.get("kind"), str)
    }


def vlan_out(row: Vlan, trunk: TrunkNames | None, l3: bool = False) -> VlanOut:
    """`trunk`: the trunk bridge's name, kernel name and uplink NIC's name (None once its
    row is gone); `l3`: whether a managed network is on the VLAN (the host has an address
    there). The kernel objects are those the backend needs now, named as in the kernel (built
    on the trunk's ifname), each with what the supervisor last observed of it (nothing until
    it has looked)."""
    fields: dict[str, Any] = dict(
        **_resource(row),
        vlan_id=row.vlan_id,
        trunk_id=row.trunk_id,
        trunk=trunk.name if trunk is not None else None,
        backend=row.backend,
        requested_backend=row.requested_backend,
        description=row.description,
        l3_interface=None,
        kernel_objects=[],
    )
    if trunk is not None and row.backend in VlanBackend._value2member_map_:
        backend = VlanBackend(row.backend)
        fields["l3_interface"] = l3_interface_name(backend, trunk.ifname, row.vlan_id)
        observed = _observed_by_object(row.observed_objects)
        fields["kernel_objects"] = [
            {
                "kind": o.kind,
                "name": o.name,
                "role": o.role,
                "parent": o.parent,
                "ifindex": observed.get((o.kind, o.name), {}).get("ifindex"),
                "observed_state": observed.get((o.kind, o.name), {}).get("state"),
            }
            for o in kernel_objects(backend, trunk.ifname, row.vlan_id, trunk.uplink, l3)
        ]
    return present(VlanOut, fields, row.deleted)


def port_out(row: Port, tap: Tap | None, user: tuple[VmNic, Vm] | None, host: str) -> PortOut:
    """A port with its tap's kernel name and carrier (`tap`: its taps row), the VM NIC that
    plugs it (`user`) and the host it is bound to."""
    oper_state = tap.observed_oper_state if tap is not None else None
    fixed = (
        [{"network_id": row.network_id, "ip_address": row.ipv4}]
        if row.network_id is not None and row.ipv4 is not None
        else []
    )
    fields = dict(
        **_resource(row),
        description=row.description,
        bridge_id=row.bridge_id if tap is None or tap.bridge_id is None else tap.bridge_id,
        vlan_id=row.vlan_id,
        mac_address=row.mac_address,
        fixed_ips=fixed,
        ipv4=row.ipv4 if fixed else None,
        network_id=row.network_id if fixed else None,
        device_id=row.device_id,
        device_owner=row.device_owner,
        admin_state_up=row.admin_state_up,
        port_security=row.port_security,
        allowed_addresses=row.allowed_addresses,
        port_status=port_status(row.status, user is not None, oper_state),
        tap=tap.ifname if tap is not None else "",
        tap_id=row.tap_id,
        oper_state=oper_state,
        binding_host_id=host,
        user=(
            None
            if user is None
            else {"vm_id": user[1].id, "vm_name": user[1].name, "nic": user[0].position}
        ),
    )
    return present(PortOut, fields, row.deleted)
