"""VM use cases: create, and every action on a VM as the action table says (vm_actions).

Creating a VM validates it against the rules and what this host offers, allocates what the
daemon owns (unique MACs, tap names for bridge NICs, loopback ports for socket NICs), claims
host ports for port forwards (clashes are refused), and writes the VM, its NICs and an
operation in the caller's transaction.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from app.db.models import LinkName, Operation, Tap, VfClaim, Vm, VmNic, new_id
from app.db.repositories import (
    HostPortRepository,
    LinkNameRepository,
    PortRepository,
    VfClaimRepository,
    VmRepository,
    nic_port,
    vm_spec,
)
from app.db.session import Session
from app.domain.errors import (
    BeingDeleted,
    Conflict,
    InUse,
    InvalidInput,
    MacTaken,
    NameTaken,
    NotFound,
    naming,
)
from app.domain.isolation import port_isolation_missing, require_port_isolation
from app.domain.networks import PortSpan
from app.domain.nics import dump_options, nic_driver
from app.domain.nics.bridge import trunk_vlans
from app.domain.nics.macvtap import ParentLink, macvtap_name, require_parent
from app.domain.nics.offloads import Offloads
from app.domain.segments import Joiner, SegmentKind
from app.domain.sriov import PhysicalFunction, free_vf
from app.domain.tenancy import LOCAL_ADMIN, Caller
from app.domain.vhost import vhost_net_missing
from app.domain.vlans import HostLacksFeature, VlanFacts, require_trunk_nic_support
from app.domain.vm_actions import Effect, Outcome, StopMode, VmVerb, desire_changes
from app.domain.vm_actions import check as check_action
from app.domain.vms import (
    BootSpec,
    NicSpec,
    PowerState,
    Vhost,
    VmSpec,
    VmStatus,
    allocate_mac,
    resolve_accelerator,
    validate_passthrough_bus,
    validate_vm,
)
from app.schemas.vms import PATCH_DEFAULTS, NicIn, VmCreate, VmPatch
from app.services import port_security
from app.services.in_use import InUseGuard
from app.services.links import require_alive, vid_backends, vlan_port
from app.services.networks import PortClaims, fixed_address
from app.services.nic_limits import nic_rate_limit
from app.services.operations import record_operation
from app.services.port_plugs import plug, plugged_port_settings, unplug_vm
from app.services.ports import LeaseReader
from app.services.quotas import QuotaGuard, vm_asks
from app.services.restrictions import RUN_AS, check_nics, require_admin_for, tenant_boot
from app.services.scoping import create_project, create_scope, list_scope
from app.services.segments import find_segment, join_port

SOCKET_PORTS = range(40000, 50000)
WILDCARD = "0.0.0.0"  # loopback ports handed to socket NICs that listen


@dataclass(frozen=True)
class HostFacts:
    """What the probed host offers (from the capability probe)."""

    nic_models: frozenset[str]
    # why /dev/vhost-net does not work here (None: it does; app.domain.vhost)
    vhost_missing: str | None
    kvm_runs_guests: bool | None
    vlans: VlanFacts | None = None  # None: not probed (then no VLAN refusal names the kernel)
    # why the kernel cannot isolate bridge ports (app.domain.isolation); None: it can, or
    # no link probe was given (then no refusal names the kernel), as `vlans`
    isolation_missing: str | None = None
    # macvtap backend (issue 13): why the kernel cannot make a macvtap (None: it can, or no
    # link probe was given), and each requested parent as netlink reported it (None: absent)
    macvtap_missing: str | None = None
    parents: Mapping[str, ParentLink | None] = field(default_factory=dict)
    # sriov backend (issue 13): the host's SR-IOV physical functions and their VFs as sysfs
    # showed them when the request came (None: not read, the request has no sriov NIC)
    sriov: Sequence[PhysicalFunction] | None = None

    @classmethod
    def from_capabilities(cls, capabilities: dict[str, Any]) -> HostFacts:
        """From the capability probe's answer (GET /v1/host/capabilities)."""
        kvm = capabilities.get("accelerators", {}).get("kvm", {})
        return cls(
            nic_models=frozenset(m["model"] for m in capabilities["qemu"]["nic_models"]),
            vhost_missing=vhost_net_missing(capabilities),
            kvm_runs_guests=kvm.get("runs_guests") if kvm.get("available") else False,
            vlans=(
                VlanFacts.from_link_probe(capabilities["links"])
                if "links" in capabilities
                else None
            ),
            isolation_missing=(
                port_isolation_missing(capabilities["links"]) if "links" in capabilities else None
            ),
            macvtap_missing=_macvtap_missing(capabilities.get("links")),
        )


def _macvtap_missing(links: Mapping[str, Any] | None) -> str | None:
    """Why the probed kernel made no macvtap (capabilities `links.macvtap`); None: it did."""
    probe = (links or {}).get("macvtap")
    if probe is None or probe.get("available"):
        return None
    return str(probe.get("reason") or "the kernel refused to create a macvtap")


def requested_offloads(nic: NicIn) -> Offloads:
    """The NIC's offloads as stored: resolved (checksum off turns tso and gso off; asking
    for either with checksum off is InvalidInput)."""
    asked = nic.offloads
    if asked is None:
        return Offloads()
    return Offloads(asked.checksum, asked.tso, asked.gso).resolved()


def _run_as_gid(body: VmCreate) -> int | None:
    if body.run_as is None:
        return None
    return body.run_as.uid if body.run_as.gid is None else body.run_as.gid


def vm_tap_name(vm_id: str, index: int) -> str:
    """`kv<8 hex of the VM id>-<index>`: 13-14 characters, unique per VM and NIC."""
    return f"kv{vm_id.replace('-', '')[:8]}-{index}"


class VmService:
    def __init__(self, session: Session, caller: Caller = LOCAL_ADMIN) -> None:
        self.session = session
        self.caller = caller
        self.scope = caller.scope

    # ---- lookups ---------------------------------------------------------------------------

    def get(self, ref: str) -> Vm:
        row = VmRepository(self.session).find(ref, self.scope)
        if row is None:
            raise NotFound(f"no VM {ref!r}")
        return row

    def nics(self, vm_id: str) -> list[VmNic]:
        return list(VmRepository(self.session).nics(vm_id))

    def page(
        self, limit: int, cursor: str | None, project: str | None = None
    ) -> tuple[Sequence[Vm], str | None]:
        """A page of the VMs the caller sees (`project`: ?project=, list_scope)."""
        scope = list_scope(self.session, self.caller, project)
        return VmRepository(self.session).page(limit, cursor, scope)

    def record_link(self, nic_id: str, up: bool) -> None:
        """The link state a NIC was last given at run time (applied by QMP set_link)."""
        nic = VmRepository(self.session).nic(nic_id)
        if nic is not None:
            nic.link_up = up

    # ---- create ----------------------------------------------------------------------------

    def create(
        self,
        body: VmCreate,
        host: HostFacts,
        leases: LeaseReader | None = None,
        images: Path | None = None,
    ) -> tuple[Vm, list[VmNic], Operation]:
        """`leases` reads a managed network's DHCP leases (a fixed address leased to another
        MAC is refused); `images`: the tenants' images directory, where a non-admin's boot
        files must lie (app.services.restrictions, 403 otherwise, as for run_as)."""
        body = self._restricted(body, images)
        project_id = create_project(self.session, self.caller, body.project_id)
        self.scope = create_scope(self.caller, project_id)
        holder = VmRepository(self.session).name_holder(body.name, project_id)
        if holder is not None:
            raise NameTaken(
                f"VM {holder.name!r} ({holder.id}) has this name: VM names are host names, "
                "unique within a project without regard to case (RFC 4343)"
            )
        QuotaGuard(self.session).charge(project_id, vm_asks(body.vcpus, body.memory_mib))
        vm_id = new_id()
        taken_macs = VmRepository(self.session).nic_macs() | PortRepository(self.session).macs()
        for index, nic in enumerate(body.nics):  # before any NIC claims a VF
            with naming(f"nics[{index}]"):
                validate_passthrough_bus(nic.backend, body.machine)
        nics = [
            self._nic(vm_id, index, nic, taken_macs, host.vlans, host)
            for index, nic in enumerate(body.nics)
        ]
        if any(nic.isolated for nic in body.nics):
            require_port_isolation(host.isolation_missing)
        spec = VmSpec(
            id=vm_id,
            name=body.name,
            vcpus=body.vcpus,
            memory_mib=body.memory_mib,
            machine=body.machine,
            accelerator=body.accelerator,
            boot=BootSpec(**body.boot.model_dump()),
            nics=tuple(spec for _, spec in nics),
        )
        validate_vm(spec, host.nic_models, host.vhost_missing)
        resolve_accelerator(body.accelerator, host.kvm_runs_guests)  # refuse kvm where it hangs
        row = Vm(
            id=vm_id,
            project_id=project_id,
            name=body.name,
            vcpus=body.vcpus,
            memory_mib=body.memory_mib,
            machine=body.machine.value,
            accelerator=body.accelerator.value,
            boot=body.boot.model_dump(),
            power_state=body.power_state.value,
            restart_policy=body.restart_policy.value,
            run_as_uid=body.run_as.uid if body.run_as else None,
            run_as_gid=_run_as_gid(body),
            generation=1,
        )
        self.session.add(row)
        nic_rows = [nic_row for nic_row, _ in nics]
        self.session.add_all(nic_rows)
        for nic_row, nic_in in zip(nic_rows, body.nics, strict=True):
            self.nic_settings(nic_row, nic_in, row.project_id, leases)
        operation = record_operation(self.session, "create", "vm", row, self.caller)
        return row, nic_rows, operation

    def nic_settings(
        self, nic_row: VmNic, nic_in: NicIn, project_id: str, leases: LeaseReader | None
    ) -> None:
        """What a new NIC (at create, or added later) gets once its row is in the session:
        a plugged port's address and rules, else its fixed address on its segment's managed
        network (if it carries one) and its port security."""
        if nic_driver(nic_row.backend).plugs_port:  # the port's address and rules
            plugged_port_settings(self.session, nic_row, nic_in)
            return
        if nic_row.vlan_tagged:
            # not on the trunk's untagged segment, so not on a managed network there
            if nic_in.ipv4 is not None:
                raise InvalidInput("ipv4 is not for trunk NICs")
        else:  # on its segment's managed network, if it carries one
            fixed_address(self.session, nic_row, nic_in.ipv4, leases)
        port_security.resolve(
            self.session, nic_row, nic_in.port_security, nic_in.allowed_addresses, project_id
        )

    def _restricted(self, body: VmCreate, images: Path | None) -> VmCreate:
        """The body as a non-admin may send it (403 naming the field otherwise), its boot
        files resolved (what is stored and what qemu opens)."""
        if body.run_as is not None:
            require_admin_for(self.caller, "run_as", RUN_AS)
        check_nics(self.caller, body.nics)
        return body.model_copy(update={"boot": tenant_boot(self.caller, body.boot, images)})

    # ---- one NIC ---------------------------------------------------------------------------

    def new_nic(
        self,
        vm_id: str,
        index: int,
        nic: NicIn,
        taken_macs: set[str],
        vlan_facts: VlanFacts | None = None,
        host: HostFacts | None = None,
    ) -> tuple[VmNic, NicSpec]:
        """A NIC's row and spec as at create (NIC `index` of VM `vm_id`; `host` has the
        parents of macvtap NICs)."""
        return self._nic(vm_id, index, nic, taken_macs, vlan_facts, host)

    def _nic(
        self,
        vm_id: str,
        index: int,
        nic: NicIn,
        taken_macs: set[str],
        vlan_facts: VlanFacts | None = None,
        host: HostFacts | None = None,
    ) -> tuple[VmNic, NicSpec]:
        """The NIC's row and spec: its backend's driver takes the request's fields and claims
        what it needs through _NicClaims; the row stores what the driver dumps."""
        driver = nic_driver(nic.backend)
        mac = nic.mac or allocate_mac(taken_macs)
        if mac in taken_macs and not driver.plugs_port:  # a port's MAC: plug_port checks it
            raise MacTaken(f"MAC {mac} is already used by another NIC or a port")
        nic_id = new_id()
        offloads = requested_offloads(nic)
        row = VmNic(
            id=nic_id,
            vm_id=vm_id,
            position=index,
            model=nic.model,
            mac=mac,
            backend=nic.backend.value,
            queues=nic.queues,
            mtu=nic.mtu,
            vhost=(nic.vhost or Vhost.AUTO).value,
            link_up=nic.link_up,
            isolated=nic.isolated,  # a bridge backend's (NicIn refuses it elsewhere)
            options={},
            **nic_rate_limit(nic.ingress_kbps, nic.egress_kbps, nic.burst_kib, nic.mtu),
            offload_checksum=offloads.checksum,
            offload_tso=offloads.tso,
            offload_gso=offloads.gso,
        )
        spec = NicSpec(
            id=nic_id,
            model=nic.model,
            mac=mac,
            backend=nic.backend,
            hub=nic.hub,  # a hub NIC, or a backend that joins a hub
            queues=nic.queues,
            vhost=nic.vhost or Vhost.AUTO,  # null is auto (NicIn)
            link_up=nic.link_up,
            mtu=nic.mtu,
            offloads=offloads,
        )
        claims = _NicClaims(self, row, index, vlan_facts, host)
        spec = driver.admit(spec, nic.model_dump(), claims)
        row.mac = spec.mac  # a port's MAC (plug_port)
        row.model = spec.model  # the sriov backend's guest device is the VF (vfio-pci)
        taken_macs.add(spec.mac)
        row.options = dump_options(spec)
        return row, spec

    # ---- helpers ---------------------------------------------------------------------------

    def claim_port(self, protocol: str, address: str, port: int, nic_id: str) -> None:
        """Claim a host port; 0.0.0.0 clashes with every address on that port."""
        claims = PortClaims(self.session, scope=self.caller.scope)
        claims.claim(protocol, address, PortSpan(port, port), "vm_nic", nic_id)

    def free_port(self, ports: Iterable[int]) -> int:
        used = HostPortRepository(self.session).ports("tcp", "127.0.0.1")
        for port in ports:
            if port not in used:
                return port
        raise Conflict("no free loopback port left for socket NICs")


class _NicClaims:
    """What a NIC's backend driver may ask while the NIC is created (app.domain.nics
    NicClaims), answered from the database and recorded on the NIC's row."""

    def __init__(
        self,
        service: VmService,
        row: VmNic,
        index: int,
        vlan_facts: VlanFacts | None = None,
        host: HostFacts | None = None,
    ) -> None:
        self.service = service
        self.vlan_facts = vlan_facts  # the probed kernel's (app.domain.vlans refusals)
        self.host = host
        self.session = service.session
        self.row = row
        self.index = index

    def vm_tap(
        self,
        bridge: str | None,
        vlan: str | None = None,
        trunk: tuple[Sequence[int], int | None] | None = None,
    ) -> str:
        if trunk is not None:
            require_trunk_nic_support(self.vlan_facts)
        found, on_vlan = vlan_port(self.session, bridge, vlan, self.vlan_facts, self.service.scope)
        if trunk is not None:
            vlans = trunk_vlans(*trunk, found.name, vid_backends(self.session, found.id))
            self.row.vlan_tagged, self.row.native_vlan = list(vlans.tagged), vlans.native
        self.row.vlan_id = None if on_vlan is None else on_vlan.id
        tap_name = vm_tap_name(self.row.vm_id, self.index)
        if LinkNameRepository(self.session).get(tap_name) is not None:
            raise NameTaken(f"link name {tap_name} is taken")
        self.session.add(LinkName(name=tap_name, resource="vm", resource_id=self.row.vm_id))
        self.row.bridge_id, self.row.tap_name = found.id, tap_name
        # the segment the NIC landed on (a VLAN, the bridge untagged; none for a trunk
        # port) may refuse it: a VLAN in error, 409 with its reason
        join_port(self.session, nic_port(self.row), Joiner.VM_NIC)
        return tap_name

    def tap_resource(self, tap: str, queues: int) -> str:
        segment = find_segment(self.session, SegmentKind.TAP, tap, self.service.scope)
        found = require_alive(segment if isinstance(segment, Tap) else None, "tap", tap)
        assert isinstance(found, Tap)
        port = PortRepository(self.session).of_tap(found.id)
        if port is not None:
            raise InUse(
                f"tap {found.name!r} is port {port.name!r}'s: plug the port "
                f'({{"backend": "port", "port": "{port.name}"}})'
            )
        user = VmRepository(self.session).tap_user(found.id)
        if user is not None:
            owner = VmRepository(self.session).visible(user, self.service.scope)
            which = f"VM {user}" if owner is not None else "a VM of another project"
            raise InUse(f"tap {found.name!r} is already used by {which}")
        if found.multi_queue != (queues > 1):
            raise InvalidInput(
                f"tap {found.name!r} was created with multi_queue={found.multi_queue}; a NIC "
                f"with {queues} queue(s) needs multi_queue={queues > 1}"
            )
        # the NIC's netdev opens the tap by its kernel name
        self.row.tap_id, self.row.tap_name = found.id, found.ifname
        join_port(self.session, nic_port(self.row), Joiner.VM_NIC)
        return found.ifname

    def plug_port(self, port: str, queues: int, mac: str | None) -> tuple[str, str, str]:
        found = plug(self.session, port, self.service.scope, self.row.vm_id, mac)
        tap = self.session.get(Tap, found.tap_id)
        assert tap is not None  # a live port keeps its tap
        if tap.multi_queue != (queues > 1):
            raise InvalidInput(f"port {found.name!r}: its tap carries one queue (queues: 1)")
        self.row.tap_id, self.row.tap_name = tap.id, tap.ifname
        join_port(self.session, nic_port(self.row), Joiner.VM_NIC)
        return tap.ifname, found.mac_address, found.id

    def virtual_function(self, pf: str | None) -> tuple[str, str, int]:
        """The first VF of `pf` (None: of any PF) that no NIC holds, as sysfs showed the pool
        when the request came (`HostFacts.sriov`), claimed in this transaction (the claim's
        primary key is the VF's PCI address: a concurrent claim of it fails the commit)."""
        pool = list(self.host.sriov or ()) if self.host is not None else []
        claims = VfClaimRepository(self.session)
        found_pf, vf = free_vf(pool, set(claims.claimed()), pf)
        self.session.add(
            VfClaim(
                pci_address=vf.pci_address,
                pf=found_pf.name,
                vf_index=vf.index,
                vm_id=self.row.vm_id,
                nic_id=self.row.id,
            )
        )
        self.session.flush()  # the next NIC of this request sees the claim
        return found_pf.name, vf.pci_address, vf.index

    def macvtap(self, parent: str) -> str:
        """The parent must be a host interface that is not ours (a link name kvmnetd claims:
        a bridge, tap, VLAN link or another VM's NIC link), as netlink reported it when the
        request came (`HostFacts.parents`); the kernel must make macvtaps."""
        missing = self.host.macvtap_missing if self.host is not None else None
        if missing is not None:
            raise HostLacksFeature(
                f"the macvtap backend needs macvtap links, which this host's kernel refused: "
                f"{missing}",
                missing_features=[
                    {
                        "feature": "macvtap",
                        "description": "macvtap links",
                        "kernel_config": "CONFIG_MACVTAP",
                        "module": "macvtap",
                        "reason": missing,
                    }
                ],
            )
        claim = LinkNameRepository(self.session).get(parent)
        if claim is not None:
            raise Conflict(
                f"parent {parent!r} is one of kvmnetd's own links (a {claim.resource}'s, "
                f"{claim.resource_id}): a macvtap sits on a host interface"
            )
        require_parent(parent, self.host.parents.get(parent) if self.host else None)
        name = macvtap_name(self.row.vm_id, self.index)
        if LinkNameRepository(self.session).get(name) is not None:
            raise NameTaken(f"link name {name} is taken")
        self.session.add(LinkName(name=name, resource="vm", resource_id=self.row.vm_id))
        self.row.tap_name = name
        return name

    def claim_port(self, protocol: str, address: str, port: int) -> None:
        self.service.claim_port(protocol, address, port, self.row.id)

    def free_loopback_port(self) -> int:
        return self.service.free_port(SOCKET_PORTS)

    def peer_nic(self, peer: str, vm: str, index: int) -> tuple[str, Mapping[str, Any]] | None:
        row = self.service.get(vm)
        if row.deleted:  # it would be left connecting to a port nobody listens on
            raise BeingDeleted(f"peer {peer!r}: VM {row.name!r} is being deleted")
        target = next((n for n in self.service.nics(row.id) if n.position == index), None)
        return None if target is None else (target.backend, target.options or {})


class VmPowerService:
    """Start, stop, kill, reboot, delete and PATCH, each as the action table says
    (app.domain.vm_actions): a new desired state with a generation and an operation, a
    no-op, or a 409 naming the status."""

    def __init__(self, session: Session, caller: Caller = LOCAL_ADMIN) -> None:
        self.session = session
        self.caller = caller
        self.vms = VmService(session, caller)

    def _cell(self, row: Vm, verb: VmVerb) -> Outcome:
        return check_action(VmStatus(row.status), verb, row.name)

    def act(self, ref: str, verb: VmVerb) -> tuple[Vm, Operation | None]:
        """start, stop or kill."""
        row = self.vms.get(ref)
        cell = self._cell(row, verb)
        if cell.effect is not Effect.DESIRE:
            return row, None  # NOOP
        assert cell.power is not None
        settled_ok = row.status == cell.power.value and row.observed_generation >= row.generation
        if not desire_changes(
            cell, PowerState(row.power_state), StopMode(row.stop_mode), settled_ok
        ):
            return row, None
        row.power_state = cell.power.value
        if cell.power is PowerState.STOPPED:
            row.stop_mode = cell.stop_mode.value
        elif row.stop_mode != StopMode.GRACEFUL.value:
            row.stop_mode = StopMode.GRACEFUL.value  # the next stop is graceful again
        operation = self._bump(row, "update", VmStatus.PENDING)
        row.intent_generation = row.generation
        return row, operation

    def reboot_target(self, ref: str) -> Vm:
        """The VM to reset (QMP system_reset); 409 unless the table allows it."""
        row = self.vms.get(ref)
        self._cell(row, VmVerb.REBOOT)
        return row

    def delete(self, ref: str, force: bool = False) -> tuple[Vm, Operation | None]:
        """Stop (gracefully, or with SIGKILL when forced), then remove everything. Refused
        (409 in-use) while port forwards target the VM or other VMs' socket NICs connect to
        it, unless forced: then those forwards are deleted and those NICs leave their VMs."""
        row = self.vms.get(ref)
        self._cell(row, VmVerb.DELETE)
        if row.deleted and not (force and row.stop_mode != StopMode.KILL.value):
            return row, None
        guard = InUseGuard(self.session, self.caller)
        if not force:
            guard.refuse(f"VM {row.name!r}", guard.vm_dependents(row))
        guard.free_vm(row)
        unplug_vm(self.session, row.id)
        row.deleted = True
        row.stop_mode = StopMode.KILL.value if force else row.stop_mode
        operation = guard.record(self._bump(row, "delete", VmStatus.DELETING))
        row.intent_generation = row.generation
        return row, operation

    def update(
        self, ref: str, body: VmPatch, host: HostFacts, images: Path | None = None
    ) -> tuple[Vm, Operation | None]:
        """PATCH: the new values, validated as a whole like a create; no power intent (a
        crashed or stopped VM stays so). Fields qemu reads at start bump spec_generation.
        A non-admin's `run_as` (other than null) and boot files outside `images` are 403."""
        row = self.vms.get(ref)
        self._cell(row, VmVerb.PATCH)
        if body.run_as is not None:
            require_admin_for(self.caller, "run_as", RUN_AS)
        if body.boot is not None:
            body = body.model_copy(update={"boot": tenant_boot(self.caller, body.boot, images)})
        wanted: dict[str, Any] = {}
        for name in body.model_fields_set:
            value = getattr(body, name)
            wanted[name] = PATCH_DEFAULTS[name] if value is None else value
        if isinstance(wanted.get("run_as"), BaseModel):
            wanted["run_as"] = wanted["run_as"].model_dump()
        if isinstance(wanted.get("boot"), BaseModel):
            wanted["boot"] = wanted["boot"].model_dump()
        changes = self._changes(row, wanted)
        if not changes:
            return row, None
        # what the change adds to the project's vcpus and memory_mib (the VM's current
        # values are in the usage already); a decrease asks for nothing
        more_vcpus = changes.get("vcpus", row.vcpus) - row.vcpus
        more_memory = changes.get("memory_mib", row.memory_mib) - row.memory_mib
        QuotaGuard(self.session).charge(row.project_id, vm_asks(more_vcpus, more_memory, vms=0))
        for name, value in changes.items():
            setattr(row, name, value)
        spec = vm_spec(row, self.vms.nics(row.id))
        validate_vm(spec, host.nic_models, host.vhost_missing)
        resolve_accelerator(spec.accelerator, host.kvm_runs_guests)
        row.generation += 1
        if set(changes) - {"restart_policy"}:
            row.spec_generation = row.generation
        return row, record_operation(self.session, "update", "vm", row, self.caller)

    @staticmethod
    def _changes(row: Vm, wanted: dict[str, Any]) -> dict[str, Any]:
        """Column values that differ from the row's."""
        columns: dict[str, Any] = {}
        for name, value in wanted.items():
            if name == "run_as":
                uid = None if value is None else value["uid"]
                gid = None if value is None else value["gid"]
                gid = uid if gid is None else gid
                columns["run_as_uid"], columns["run_as_gid"] = uid, gid
            elif name == "boot":
                columns["boot"] = dict(value)
            else:
                columns[name] = value.value if isinstance(value, enum.Enum) else value
        return {name: value for name, value in columns.items() if getattr(row, name) != value}

    def _bump(self, row: Vm, action: str, status: VmStatus) -> Operation:
        row.generation += 1
        row.status = status.value
        row.status_reason = None
        return record_operation(self.session, action, "vm", row, self.caller)
