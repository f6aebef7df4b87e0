"""SQLAlchemy 2 ORM models. The schema itself comes only from Alembic migrations.

Desired state (written by the API) and observed state (written by the supervisor) live side
by side on each row; `generation` / `observed_generation` tell whether they agree.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from app.domain.links import generate_mac
from app.domain.names import MTU_MAX, MTU_MIN, STP_FORWARD_DELAY_CS
from app.domain.networks import LEASE_SECONDS, MAX_HOST_ROUTES, MAX_NAMESERVERS, PORTS
from app.domain.rate_limits import BURST_KIB, RATE_KBPS
from app.domain.status import Status
from app.domain.tenancy import DEFAULT_PROJECT_ID, Role
from app.domain.vlans import RESOLVED_BACKENDS, VID_MAX, VID_MIN, VlanBackend
from app.domain.vms import MEMORY_MIB, QUEUES, VCPUS


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_id() -> str:
    return str(uuid.uuid4())


# ---- CHECK constraints: the database refuses what validation would refuse -----------------
# Migration 0011 adds the same ones to existing databases (a test compares them). SQLite keeps
# booleans as 0/1 and JSON as text, so both are checked; names are ck_<table>_<what>.

ID_MAX = 2**32 - 2  # uid/gid: (uid_t)-1 means "none" to the kernel
MAC_GLOB = ":".join(["[0-9a-f][0-9a-f]"] * 6)
# a PCI address as sysfs names it (app.domain.sriov.PCI_ADDRESS): dddd:bb:dd.f
PCI_GLOB = "[0-9a-f][0-9a-f][0-9a-f][0-9a-f]:[0-9a-f][0-9a-f]:[0-1][0-9a-f].[0-7]"


def _check(table: str, what: str, sql: str) -> CheckConstraint:
    return CheckConstraint(sql, name=f"ck_{table}_{what}")


def _flags(table: str, *columns: str) -> list[CheckConstraint]:
    return [_check(table, c, f"{c} IN (0, 1)") for c in columns]


def _json(table: str, column: str, kind: str, nullable: bool = False) -> CheckConstraint:
    sql = f"json_valid({column}) AND json_type({column}) = '{kind}'"
    return _check(table, column, f"{column} IS NULL OR ({sql})" if nullable else sql)


def _between(table: str, column: str, low: float, high: float, nullable: bool) -> CheckConstraint:
    sql = f"{column} BETWEEN {low} AND {high}"
    return _check(table, column, f"{column} IS NULL OR {sql}" if nullable else sql)


def _one_of(table: str, column: str, values: list[str]) -> CheckConstraint:
    listed = ", ".join(f"'{v}'" for v in values)
    return _check(table, column, f"{column} IN ({listed})")


def _resource_checks(
    table: str, statuses: list[str] | None
) -> list[CheckConstraint | UniqueConstraint]:
    checks: list[CheckConstraint | UniqueConstraint] = [
        # names are unique within a project (two projects may both have a `web`)
        UniqueConstraint("project_id", "name", name=f"uq_{table}_project_id_name"),
        *_flags(table, "deleted"),
        _check(table, "generation", "generation >= 1"),
        _check(table, "observed_generation", "observed_generation >= 0"),
    ]
    return checks + ([_one_of(table, "status", statuses)] if statuses else [])


def _link_checks(table: str) -> list[CheckConstraint | UniqueConstraint]:
    return [
        *_resource_checks(table, [s.value for s in Status]),
        UniqueConstraint("ifname", name=f"uq_{table}_ifname"),
        *_flags(table, "create_intent"),
        _between(table, "mtu", MTU_MIN, MTU_MAX, nullable=True),
        _check(table, "mac", f"mac IS NULL OR mac GLOB '{MAC_GLOB}'"),
        _json(table, "addresses", "array"),
    ]


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Stores UTC; always returns timezone-aware datetimes (SQLite drops the zone)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        return value.replace(tzinfo=dt.UTC) if value is not None else None


class Unreadable(str):
    """A stored JSON text that does not parse (written by hand or by an older version). It
    is loaded as this marker instead of failing the whole query, so the row can be reported
    on and still listed, read and deleted."""


class StoredJSON(TypeDecorator[Any]):
    """JSON whose reading never raises: text that does not parse loads as `Unreadable`."""

    impl = JSON
    cache_ok = True

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        parse = self.impl_instance.result_processor(dialect, coltype)

        def process(value: Any) -> Any:
            if parse is None or value is None:
                return value
            try:
                return parse(value)
            except ValueError:
                return Unreadable(value)

        return process


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dt.datetime: UTCDateTime(),
        dict[str, Any]: StoredJSON(),
    }


class Project(Base):
    """A tenant (app.domain.tenancy): its resources, tokens, quotas and VLAN id ranges.
    `quotas` maps a quota name to its limit (absent: unlimited); `vlan_ranges` holds
    [first, last] pairs of VLAN ids; `shared_segments` the shared bridges, VLANs and
    networks (of other projects) its NICs may attach to, as {"resource", "id"} objects."""

    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str | None] = mapped_column(Text, default=None)
    quotas: Mapped[dict[str, Any]] = mapped_column(StoredJSON, default=dict)
    vlan_ranges: Mapped[list[list[int]]] = mapped_column(StoredJSON, default=list)
    shared_segments: Mapped[list[dict[str, str]]] = mapped_column(StoredJSON, default=list)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (
        _json("projects", "quotas", "object"),
        _json("projects", "vlan_ranges", "array"),
        _json("projects", "shared_segments", "array"),
    )


class ApiToken(Base):
    """A bearer token of one project with one role. Only the secret's SHA-256 is kept
    (app.domain.tenancy.secret_hash); revoked and expired tokens stay listed."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    role: Mapped[str] = mapped_column(String(8))
    description: Mapped[str | None] = mapped_column(Text, default=None)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    expires_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(default=None)

    __table_args__ = (
        _one_of("api_tokens", "role", [r.value for r in Role]),
        _check("api_tokens", "secret_hash", f"secret_hash GLOB '{'[0-9a-f]' * 64}'"),
    )


class ResourceColumns:
    """Columns every reconciled resource has."""

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    # unique per project: each table's uq_<table>_project_id_name (_resource_checks)
    name: Mapped[str] = mapped_column(String(64))
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="RESTRICT"), index=True, default=DEFAULT_PROJECT_ID
    )
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    status_reason: Mapped[str | None] = mapped_column(Text, default=None)
    generation: Mapped[int] = mapped_column(Integer, default=1)
    observed_generation: Mapped[int] = mapped_column(Integer, default=0)

    def event_fields(
        self, resource: str, what: str | None = None, **override: Any
    ) -> dict[str, Any]:
        """The fields of an event about this row: type `<resource>.<what or status>`."""
        return {
            "type": f"{resource}.{what or self.status}",
            "resource": resource,
            "resource_id": self.id,
            "name": self.name,
            "project_id": self.project_id,
            "status": self.status,
            "status_reason": self.status_reason,
            "generation": self.generation,
            "observed_generation": self.observed_generation,
            **override,
        }


class LinkColumns(ResourceColumns):
    """Columns of resources that are one kernel link. `ifname` is the link's name in the
    kernel (app.domain.names.link_ifname: `name` in the default project, derived from the id
    in any other), fixed at creation and claimed in link_names; `name` is the user's."""

    ifname: Mapped[str] = mapped_column(String(15))
    mtu: Mapped[int | None] = mapped_column(Integer, default=None)
    mac: Mapped[str | None] = mapped_column(String(17), default=None)
    addresses: Mapped[list[str]] = mapped_column(StoredJSON, default=list)
    # journal: set (and committed) right before the create call, cleared once marked
    create_intent: Mapped[bool] = mapped_column(Boolean, default=False)
    observed_ifindex: Mapped[int | None] = mapped_column(Integer, default=None)
    observed_mac: Mapped[str | None] = mapped_column(String(17), default=None)
    observed_mtu: Mapped[int | None] = mapped_column(Integer, default=None)
    observed_oper_state: Mapped[str | None] = mapped_column(String(16), default=None)

    def event_fields(
        self, resource: str, what: str | None = None, **override: Any
    ) -> dict[str, Any]:
        """As every resource's, and `data` names the kernel link: `ifname` (the row's `name`
        is the user's, which is not the kernel's outside the default project)."""
        fields = super().event_fields(resource, what, **override)
        fields["data"] = {"ifname": self.ifname, **(fields.get("data") or {})}
        return fields


class Bridge(LinkColumns, Base):
    """`mac` is the MAC the user pinned (None: none); `generated_mac` is the one made at
    creation (locally administered), which the bridge keeps when nothing is pinned."""

    __tablename__ = "bridges"

    generated_mac: Mapped[str] = mapped_column(String(17), default=generate_mac)

    stp: Mapped[bool] = mapped_column(Boolean, default=False)
    forward_delay_cs: Mapped[int] = mapped_column(Integer, default=0)
    # the supervisor switched vlan_filtering on for a VLAN of ours (journaled before the
    # switch); it switches it off again once no VLAN of ours needs it (app.supervisor.trunks)
    vlan_filtering_ours: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (
        *_link_checks("bridges"),
        *_flags("bridges", "stp", "vlan_filtering_ours"),
        # 0-30 s; with STP on the kernel wants 2-30 s
        _check(
            "bridges",
            "forward_delay_cs",
            f"forward_delay_cs BETWEEN 0 AND {STP_FORWARD_DELAY_CS[1]} AND "
            f"(stp = 0 OR forward_delay_cs >= {STP_FORWARD_DELAY_CS[0]})",
        ),
        _check("bridges", "generated_mac", f"generated_mac GLOB '{MAC_GLOB}'"),
    )


class Tap(LinkColumns, Base):
    __tablename__ = "taps"

    bridge_id: Mapped[str | None] = mapped_column(
        ForeignKey("bridges.id", ondelete="RESTRICT"), default=None, index=True
    )
    owner_uid: Mapped[int | None] = mapped_column(Integer, default=None)
    owner_gid: Mapped[int | None] = mapped_column(Integer, default=None)
    multi_queue: Mapped[bool] = mapped_column(Boolean, default=False)
    vnet_hdr: Mapped[bool] = mapped_column(Boolean, default=False)
    # an access port of this VLAN (then bridge_id is the VLAN's trunk; migration 0014)
    vlan_id: Mapped[str | None] = mapped_column(
        ForeignKey("vlans.id", ondelete="RESTRICT"), default=None, index=True
    )
    # the bridge port flag IFLA_BRPORT_ISOLATED (migration 0020): only on a bridge; and
    # what netlink last reported for it (None: no bridge port)
    isolated: Mapped[bool] = mapped_column(Boolean, default=False)
    observed_isolated: Mapped[bool | None] = mapped_column(Boolean, default=None)

    __table_args__ = (
        *_link_checks("taps"),
        *_flags("taps", "multi_queue", "vnet_hdr", "isolated"),
        _check("taps", "vlan_id", "vlan_id IS NULL OR bridge_id IS NOT NULL"),
        _check("taps", "isolated_port", "isolated = 0 OR bridge_id IS NOT NULL OR deleted = 1"),
        _between("taps", "owner_uid", 0, ID_MAX, nullable=True),
        _between("taps", "owner_gid", 0, ID_MAX, nullable=True),
    )


class LinkName(Base):
    """Claims a kernel link name for one resource, so names are unique across kinds."""

    __tablename__ = "link_names"

    name: Mapped[str] = mapped_column(String(15), primary_key=True)
    resource: Mapped[str] = mapped_column(String(16))
    resource_id: Mapped[str] = mapped_column(String(36), index=True)


class VfClaim(Base):
    """An SR-IOV virtual function held by one VM NIC (the sriov backend, migration 0026): the
    primary key makes sure two NICs never get one VF. It goes with the NIC, or with the VM."""

    __tablename__ = "vf_claims"

    pci_address: Mapped[str] = mapped_column(String(12), primary_key=True)
    pf: Mapped[str] = mapped_column(String(15))
    vf_index: Mapped[int] = mapped_column(Integer)
    vm_id: Mapped[str] = mapped_column(String(36), index=True)
    nic_id: Mapped[str] = mapped_column(String(36))

    __table_args__ = (
        UniqueConstraint("nic_id", name="uq_vf_claims_nic_id"),
        _check("vf_claims", "pci_address", f"pci_address GLOB '{PCI_GLOB}'"),
        _check("vf_claims", "vf_index", "vf_index >= 0"),
    )


class EventSequence(Base):
    """The next event id no daemon has handed out yet (one row): event ids increase across
    restarts because each run reserves a block of ids here before publishing any."""

    __tablename__ = "event_sequence"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # always 1
    next_id: Mapped[int] = mapped_column(Integer)

    __table_args__ = (
        _check("event_sequence", "one_row", "id = 1"),
        _check("event_sequence", "next_id", "next_id >= 1"),
    )


class Operation(Base):
    """One accepted mutation; it succeeds when its resource reaches target_generation."""

    __tablename__ = "operations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    action: Mapped[str] = mapped_column(String(16))  # create, update, delete
    resource: Mapped[str] = mapped_column(String(16))
    resource_id: Mapped[str] = mapped_column(String(36), index=True)
    target_generation: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="running", index=True)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    request_id: Mapped[str | None] = mapped_column(String(128), default=None)
    # who asked (the audit trail): the resource's project and the token used (None: the
    # unix socket or the first-start admin token, see `via`)
    project_id: Mapped[str] = mapped_column(String(36), index=True, default=DEFAULT_PROJECT_ID)
    token_id: Mapped[str | None] = mapped_column(String(36), index=True, default=None)
    via: Mapped[str | None] = mapped_column(String(16), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    # a forced delete: what it detached, removed or stopped ({kind, id, name, action, ...})
    detached: Mapped[list[dict[str, str]] | None] = mapped_column(JSON, default=None)


class Vm(ResourceColumns, Base):
    """A virtual machine: desired shape and power state, and what its qemu is doing."""

    __tablename__ = "vms"

    vcpus: Mapped[int] = mapped_column(Integer, default=1)
    memory_mib: Mapped[int] = mapped_column(Integer, default=256)
    machine: Mapped[str] = mapped_column(String(16), default="pc")
    accelerator: Mapped[str] = mapped_column(String(8), default="auto")
    boot: Mapped[dict[str, Any]] = mapped_column(StoredJSON, default=dict)
    power_state: Mapped[str] = mapped_column(String(16), default="running")
    # how the next stop ends qemu: "graceful" (the shutdown ladder) or "kill" (SIGKILL)
    stop_mode: Mapped[str] = mapped_column(String(8), default="graceful", server_default="graceful")
    restart_policy: Mapped[str] = mapped_column(String(16), default="never")
    # NULL: the daemon's unprivileged qemu user (settings.qemu_user)
    run_as_uid: Mapped[int | None] = mapped_column(Integer, default=None)
    run_as_gid: Mapped[int | None] = mapped_column(Integer, default=None)
    # the generation of the last power intent (start/stop/kill); a PATCH is none
    intent_generation: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # the generation of the last change qemu reads at start (vcpus, memory, boot, ...)
    spec_generation: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # observed
    launched_generation: Mapped[int | None] = mapped_column(Integer, default=None)
    # the index of the next NIC added after creation (migration 0024; None: one past the
    # highest): indexes are never given twice while the VM exists
    next_nic_index: Mapped[int | None] = mapped_column(Integer, default=None)
    observed_uid: Mapped[int | None] = mapped_column(Integer, default=None)
    observed_gid: Mapped[int | None] = mapped_column(Integer, default=None)
    pid: Mapped[int | None] = mapped_column(Integer, default=None)
    accelerator_used: Mapped[str | None] = mapped_column(String(8), default=None)
    started_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    exit_code: Mapped[int | None] = mapped_column(Integer, default=None)
    last_output: Mapped[str | None] = mapped_column(Text, default=None)
    restarts: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (
        *_resource_checks("vms", None),  # VM statuses: app.domain.vms.VmStatus
        _between("vms", "vcpus", *VCPUS, nullable=False),
        _between("vms", "memory_mib", *MEMORY_MIB, nullable=False),
        _json("vms", "boot", "object"),
        _between("vms", "run_as_uid", 0, ID_MAX, nullable=True),
        _between("vms", "run_as_gid", 0, ID_MAX, nullable=True),
        _check("vms", "restarts", "restarts >= 0"),
    )


# a NIC's rate limits: on a bridge NIC's tap only, and a burst only with a rate
RATE_LIMIT_CHECK = (
    "(ingress_kbps IS NULL AND egress_kbps IS NULL AND burst_kib IS NULL) OR "
    "(bridge_id IS NOT NULL AND (ingress_kbps IS NOT NULL OR egress_kbps IS NOT NULL))"
)


class VmNic(Base):
    """One guest NIC. MACs are unique across every VM the daemon knows (the index)."""

    __tablename__ = "vm_nics"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    vm_id: Mapped[str] = mapped_column(ForeignKey("vms.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    model: Mapped[str | None] = mapped_column(String(32), default=None)  # None: a hub join
    mac: Mapped[str] = mapped_column(String(17), unique=True)
    backend: Mapped[str] = mapped_column(String(16))
    tap_name: Mapped[str | None] = mapped_column(String(15), default=None)
    bridge_id: Mapped[str | None] = mapped_column(
        ForeignKey("bridges.id", ondelete="RESTRICT"), default=None, index=True
    )
    tap_id: Mapped[str | None] = mapped_column(
        ForeignKey("taps.id", ondelete="RESTRICT"), default=None, index=True
    )
    options: Mapped[dict[str, Any]] = mapped_column(StoredJSON, default=dict)  # user/socket/hub
    queues: Mapped[int] = mapped_column(Integer, default=1)
    mtu: Mapped[int | None] = mapped_column(Integer, default=None)  # virtio host_mtu and tap MTU
    vhost: Mapped[str] = mapped_column(String(8), default="auto")
    link_up: Mapped[bool] = mapped_column(Boolean, default=True)
    # on a managed network: the fixed address dnsmasq hands this MAC (a static lease)
    network_id: Mapped[str | None] = mapped_column(
        ForeignKey("networks.id", ondelete="SET NULL"), default=None, index=True
    )
    ipv4: Mapped[str | None] = mapped_column(String(15), default=None)
    # observed by the network worker: the address dnsmasq's lease file shows for this MAC, and
    # why that is a problem when it is not `ipv4`
    observed_ipv4: Mapped[str | None] = mapped_column(String(15), default=None)
    address_status_reason: Mapped[str | None] = mapped_column(Text, default=None)
    # VLANs (migration 0014, app.domain.vlans): an access port of VLAN `vlan_id` (bridge_id
    # is its trunk), or a trunk NIC carrying `vlan_tagged` (VIDs, sorted) tagged and
    # `native_vlan` untagged; [] and None: neither
    vlan_id: Mapped[str | None] = mapped_column(
        ForeignKey("vlans.id", ondelete="RESTRICT"), default=None, index=True
    )
    vlan_tagged: Mapped[list[int]] = mapped_column(StoredJSON, default=list)
    native_vlan: Mapped[int | None] = mapped_column(Integer, default=None)
    # anti-spoofing (migration 0019, app.domain.port_security): stored resolved (the API's
    # null is decided by app.services.port_security.default_port_security); allowed_addresses
    # are CIDRs it may also send from; port_security_reason: observed, why its rules are not
    # loaded (None: they are)
    port_security: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    allowed_addresses: Mapped[list[str]] = mapped_column(
        StoredJSON, default=list, server_default="[]"
    )
    port_security_reason: Mapped[str | None] = mapped_column(Text, default=None)
    # its tap is an isolated bridge port (IFLA_BRPORT_ISOLATED; migration 0020): bridge
    # backend only
    isolated: Mapped[bool] = mapped_column(Boolean, default=False)
    # rate limits (migration 0024, app.domain.rate_limits): kbit/s towards the guest
    # (ingress) and from it (egress), the bucket in KiB; None: no limit, the default burst.
    # Bridge backend only (its tap)
    ingress_kbps: Mapped[int | None] = mapped_column(Integer, default=None)
    egress_kbps: Mapped[int | None] = mapped_column(Integer, default=None)
    burst_kib: Mapped[int | None] = mapped_column(Integer, default=None)
    # virtio offloads (migration 0026, app.domain.nics.offloads): None: qemu's default;
    # stored resolved (checksum off turns tso and gso off)
    offload_checksum: Mapped[bool | None] = mapped_column(Boolean, default=None)
    offload_tso: Mapped[bool | None] = mapped_column(Boolean, default=None)
    offload_gso: Mapped[bool | None] = mapped_column(Boolean, default=None)

    __table_args__ = (
        UniqueConstraint("network_id", "ipv4", name="uq_vm_nics_network_ipv4"),
        *_flags("vm_nics", "port_security"),
        _json("vm_nics", "allowed_addresses", "array"),
        _json("vm_nics", "vlan_tagged", "array"),
        _between("vm_nics", "native_vlan", VID_MIN, VID_MAX, nullable=True),
        _check(
            "vm_nics",
            "vlan_port",
            "(vlan_id IS NULL OR json_array_length(vlan_tagged) = 0) AND "
            "(native_vlan IS NULL OR json_array_length(vlan_tagged) > 0) AND "
            "(bridge_id IS NOT NULL OR (vlan_id IS NULL AND json_array_length(vlan_tagged) = 0))",
        ),
        _check("vm_nics", "position", "position >= 0"),
        _check("vm_nics", "mac", f"mac GLOB '{MAC_GLOB}'"),
        _json("vm_nics", "options", "object"),
        _between("vm_nics", "queues", *QUEUES, nullable=False),
        *_flags("vm_nics", "link_up", "isolated"),
        _check("vm_nics", "isolated_port", "isolated = 0 OR bridge_id IS NOT NULL"),
        _between("vm_nics", "mtu", MTU_MIN, MTU_MAX, nullable=True),
        _between("vm_nics", "ingress_kbps", *RATE_KBPS, nullable=True),
        _between("vm_nics", "egress_kbps", *RATE_KBPS, nullable=True),
        _between("vm_nics", "burst_kib", *BURST_KIB, nullable=True),
        _check("vm_nics", "rate_limit", RATE_LIMIT_CHECK),
        *_flags("vm_nics", "offload_checksum", "offload_tso", "offload_gso"),
        _check(
            "vm_nics",
            "offload_segmentation",
            "offload_checksum IS NOT 0 OR (offload_tso = 0 AND offload_gso = 0)",
        ),
    )


class HostPort(Base):
    """Host ports `port`..`end_port` claimed by a user-networking forward of a VM NIC or by a
    network's port forward. Writers are serialized, and a claim is checked against every
    overlapping one (the wildcard address 0.0.0.0 overlaps all) before it is added."""

    __tablename__ = "host_ports"

    protocol: Mapped[str] = mapped_column(String(4), primary_key=True)
    address: Mapped[str] = mapped_column(String(45), primary_key=True)
    port: Mapped[int] = mapped_column(Integer, primary_key=True)
    end_port: Mapped[int | None] = mapped_column(Integer, default=None)  # None: just `port`
    owner: Mapped[str] = mapped_column(String(16))  # "vm_nic" or "port_forward"
    owner_id: Mapped[str] = mapped_column(String(36), index=True)


# a live network is on exactly one of its bridge, tap or VLAN; a deleted one may outlive it
NETWORK_ONE_LINK = (
    "deleted = 1 OR (bridge_id IS NOT NULL) + (tap_id IS NOT NULL) + (vlan_id IS NOT NULL) = 1"
)


# the lists migration 0021 adds: JSON arrays no longer than the domain allows
NETWORK_OPTION_CHECKS = [
    _check(
        "networks",
        column,
        f"json_valid({column}) AND json_type({column}) = 'array' AND "
        f"json_array_length({column}) <= {most}",
    )
    for column, most in (("dns_nameservers", MAX_NAMESERVERS), ("host_routes", MAX_HOST_ROUTES))
]


class Network(ResourceColumns, Base):
    """A managed IPv4 network on one of our links (a bridge or a routed tap): the link carries
    the gateway, dnsmasq serves DHCP/DNS there, our nftables table masquerades the subnet."""

    __tablename__ = "networks"

    # the services keep a live network's link; a deleted one may outlive it briefly
    bridge_id: Mapped[str | None] = mapped_column(
        ForeignKey("bridges.id", ondelete="SET NULL"), default=None, unique=True
    )
    tap_id: Mapped[str | None] = mapped_column(
        ForeignKey("taps.id", ondelete="SET NULL"), default=None, unique=True
    )
    # or a VLAN: the gateway lives on its L3 interface (app.domain.vlans.l3_interface_name)
    vlan_id: Mapped[str | None] = mapped_column(
        ForeignKey("vlans.id", ondelete="SET NULL"), default=None, unique=True
    )
    subnet: Mapped[str] = mapped_column(String(18))
    gateway: Mapped[str] = mapped_column(String(15))
    nat: Mapped[bool] = mapped_column(Boolean, default=True)
    nat_interface: Mapped[str | None] = mapped_column(String(15), default=None)
    snat_address: Mapped[str | None] = mapped_column(String(15), default=None)
    dhcp: Mapped[bool] = mapped_column(Boolean, default=True)
    range_start: Mapped[str] = mapped_column(String(15))
    range_end: Mapped[str] = mapped_column(String(15))
    lease_seconds: Mapped[int] = mapped_column(Integer, default=3600)
    domain: Mapped[str | None] = mapped_column(String(253), default=None)
    # migration 0021: DHCP option 6 servers ([]: the gateway) and option 121 routes
    # ({"destination": CIDR, "nexthop": address} objects), validated by
    # app.domain.networks check_nameservers / check_host_routes; Neutron's description
    dns_nameservers: Mapped[list[str]] = mapped_column(
        StoredJSON, default=list, server_default="[]"
    )
    host_routes: Mapped[list[dict[str, str]]] = mapped_column(
        StoredJSON, default=list, server_default="[]"
    )
    description: Mapped[str | None] = mapped_column(Text, default=None)
    # observed
    dnsmasq_pid: Mapped[int | None] = mapped_column(Integer, default=None)
    restarts: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (
        *_resource_checks("networks", [s.value for s in Status]),
        *_flags("networks", "nat", "dhcp"),
        _between("networks", "lease_seconds", *LEASE_SECONDS, nullable=False),
        _check("networks", "restarts", "restarts >= 0"),
        _check("networks", "one_link", NETWORK_ONE_LINK),
        *NETWORK_OPTION_CHECKS,
    )


class PortForward(ResourceColumns, Base):
    """Host ports forwarded (DNAT) to a VM NIC's fixed address on a managed network."""

    __tablename__ = "port_forwards"

    network_id: Mapped[str] = mapped_column(
        ForeignKey("networks.id", ondelete="RESTRICT"), index=True
    )
    vm_nic_id: Mapped[str] = mapped_column(ForeignKey("vm_nics.id", ondelete="CASCADE"), index=True)
    protocol: Mapped[str] = mapped_column(String(4))
    listen_address: Mapped[str] = mapped_column(String(15))  # 0.0.0.0: every host address
    port: Mapped[int] = mapped_column(Integer)
    end_port: Mapped[int] = mapped_column(Integer)
    target_port: Mapped[int] = mapped_column(Integer)
    description: Mapped[str | None] = mapped_column(Text, default=None)

    __table_args__ = (
        *_resource_checks("port_forwards", [s.value for s in Status]),
        _one_of("port_forwards", "protocol", ["tcp", "udp"]),
        _between("port_forwards", "port", *PORTS, nullable=False),
        _check("port_forwards", "end_port", f"end_port BETWEEN port AND {PORTS[1]}"),
        _between("port_forwards", "target_port", *PORTS, nullable=False),
    )


class Uplink(ResourceColumns, Base):
    """A bridge's uplink: a host NIC enslaved into the bridge, with the host's IP
    configuration moved from the NIC onto the bridge. `name` is the NIC's name."""

    __tablename__ = "uplinks"

    # the bridge stays until its uplink is gone (the configuration moved back first)
    bridge_id: Mapped[str] = mapped_column(
        ForeignKey("bridges.id", ondelete="RESTRICT"), unique=True
    )
    permanent_mac: Mapped[str | None] = mapped_column(String(17), default=None)
    probe_address: Mapped[str | None] = mapped_column(String(45), default=None)
    probe_timeout: Mapped[float] = mapped_column(Float, default=5.0)
    take_mac: Mapped[bool] = mapped_column(Boolean, default=True)
    dhcp: Mapped[str] = mapped_column(String(8), default="refuse")  # refuse | move
    # the journal: phase and, from the moment a move starts, the NIC's configuration as it
    # was (what a restore puts back) and the bridge's MAC before the move
    phase: Mapped[str] = mapped_column(String(16), default="detached")
    # none_as_null: "nothing saved" is SQL NULL, never the JSON text 'null'
    saved: Mapped[dict[str, Any] | None] = mapped_column(
        StoredJSON(none_as_null=True), default=None
    )
    bridge_mac_before: Mapped[str | None] = mapped_column(String(17), default=None)
    steps: Mapped[list[str]] = mapped_column(
        StoredJSON, default=list
    )  # of the last move or restore

    __table_args__ = (
        *_resource_checks("uplinks", [s.value for s in Status]),
        *_flags("uplinks", "take_mac"),
        _between("uplinks", "probe_timeout", 0.5, 60, nullable=False),
        _one_of("uplinks", "dhcp", ["refuse", "move"]),
        _one_of("uplinks", "phase", ["detached", "moving", "attached", "restoring"]),
        _json("uplinks", "saved", "object", nullable=True),
        _json("uplinks", "steps", "array"),
    )


class Vlan(ResourceColumns, Base):
    """A VLAN (IEEE 802.1Q) on one of our bridges, its trunk (app.domain.vlans). `backend`
    is the one chosen at creation (never `auto`); `requested_backend` what was asked. The
    supervisor writes `observed_objects`: the kernel objects it found, one JSON object each
    ({"name", "ifindex", "state"})."""

    __tablename__ = "vlans"

    vlan_id: Mapped[int] = mapped_column(Integer)
    # a live VLAN keeps its trunk (the services refuse the trunk's delete, or delete the
    # VLANs with it); a deleted one may outlive the trunk's row only until that row goes
    trunk_id: Mapped[str] = mapped_column(ForeignKey("bridges.id", ondelete="CASCADE"), index=True)
    backend: Mapped[str] = mapped_column(String(16))
    requested_backend: Mapped[str] = mapped_column(String(16), default=VlanBackend.AUTO.value)
    description: Mapped[str | None] = mapped_column(Text, default=None)
    observed_objects: Mapped[list[dict[str, Any]]] = mapped_column(StoredJSON, default=list)

    __table_args__ = (
        UniqueConstraint("trunk_id", "vlan_id", name="uq_vlans_trunk_id_vlan_id"),
        *_resource_checks("vlans", [s.value for s in Status]),
        _between("vlans", "vlan_id", VID_MIN, VID_MAX, nullable=False),
        _one_of("vlans", "backend", [b.value for b in RESOLVED_BACKENDS]),
        _one_of("vlans", "requested_backend", [b.value for b in VlanBackend]),
        _json("vlans", "observed_objects", "array"),
    )


class Tag(Base):
    """A Neutron tag (issue 12) of one resource of the Neutron API: `resource` is the
    Neutron resource (network, subnet, port), `resource_id` the id of the row standing for
    it (a bridge's or VLAN's for a network). Neutron's rules (at most 255 characters, no ','
    or '/': app.domain.neutron.validate_tag) are CHECKed too (migration 0022_tags)."""

    __tablename__ = "tags"

    resource: Mapped[str] = mapped_column(String(16), primary_key=True)
    resource_id: Mapped[str] = mapped_column(String(36), primary_key=True, index=True)
    tag: Mapped[str] = mapped_column(String(255), primary_key=True)

    __table_args__ = (
        CheckConstraint(
            "length(tag) BETWEEN 1 AND 255 AND instr(tag, ',') = 0 AND instr(tag, '/') = 0",
            name="ck_tags_tag",
        ),
    )


class Port(ResourceColumns, Base):
    """A port (Neutron's): an attachment point on one L2 segment, an untagged port of a
    bridge or an access port of a VLAN (exactly one of bridge_id, vlan_id), with its own
    tap (the taps row `tap_id`, kernel name `tap` + the id's first 11 hex digits: Nova's
    naming), a guest MAC and at most one fixed IPv4 address on the segment's managed
    network (a static DHCP lease whether or not a VM uses the port). A VM NIC with the
    `port` backend plugs it: then device_id is the VM's id. `status` is the port's
    lifecycle, mirrored from its tap by the link supervisor (app.supervisor.links)."""

    __tablename__ = "ports"

    bridge_id: Mapped[str | None] = mapped_column(
        ForeignKey("bridges.id", ondelete="RESTRICT"), default=None, index=True
    )
    vlan_id: Mapped[str | None] = mapped_column(
        ForeignKey("vlans.id", ondelete="RESTRICT"), default=None, index=True
    )
    tap_id: Mapped[str] = mapped_column(ForeignKey("taps.id", ondelete="RESTRICT"), unique=True)
    mac_address: Mapped[str] = mapped_column(String(17), unique=True)
    # its fixed address on the segment's managed network (None: none)
    network_id: Mapped[str | None] = mapped_column(
        ForeignKey("networks.id", ondelete="SET NULL"), default=None, index=True
    )
    ipv4: Mapped[str | None] = mapped_column(String(15), default=None)
    device_id: Mapped[str] = mapped_column(String(255), default="")
    device_owner: Mapped[str] = mapped_column(String(255), default="")
    admin_state_up: Mapped[bool] = mapped_column(Boolean, default=True)
    description: Mapped[str | None] = mapped_column(Text, default=None)
    # anti-spoofing of the port's tap while a VM uses it, as a VM NIC's (migration 0019)
    port_security: Mapped[bool] = mapped_column(Boolean, default=False)
    allowed_addresses: Mapped[list[str]] = mapped_column(StoredJSON, default=list)

    __table_args__ = (
        *_resource_checks("ports", [s.value for s in Status]),
        UniqueConstraint("network_id", "ipv4", name="uq_ports_network_ipv4"),
        *_flags("ports", "admin_state_up", "port_security"),
        _json("ports", "allowed_addresses", "array"),
        _check("ports", "mac_address", f"mac_address GLOB '{MAC_GLOB}'"),
        # a live port is on exactly one segment; a deleted one may outlive it briefly
        _check(
            "ports", "one_segment", "deleted = 1 OR (bridge_id IS NULL) + (vlan_id IS NULL) = 1"
        ),
    )
