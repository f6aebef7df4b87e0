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


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_id() -> str:
    return str(uuid.uuid4())


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


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dt.datetime: UTCDateTime(),
        dict[str, Any]: JSON,
    }


class ResourceColumns:
    """Columns every reconciled resource has."""

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
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
            "status": self.status,
            "status_reason": self.status_reason,
            "generation": self.generation,
            "observed_generation": self.observed_generation,
            **override,
        }


class LinkColumns(ResourceColumns):
    """Columns of resources that are one kernel link."""

    mtu: Mapped[int | None] = mapped_column(Integer, default=None)
    mac: Mapped[str | None] = mapped_column(String(17), default=None)
    addresses: Mapped[list[str]] = mapped_column(JSON, default=list)
    # journal: set (and committed) right before the create call, cleared once marked
    create_intent: Mapped[bool] = mapped_column(Boolean, default=False)
    observed_ifindex: Mapped[int | None] = mapped_column(Integer, default=None)
    observed_mac: Mapped[str | None] = mapped_column(String(17), default=None)


class Bridge(LinkColumns, Base):
    __tablename__ = "bridges"

    stp: Mapped[bool] = mapped_column(Boolean, default=False)
    forward_delay_cs: Mapped[int] = mapped_column(Integer, default=0)


class Tap(LinkColumns, Base):
    __tablename__ = "taps"

    bridge_id: Mapped[str | None] = mapped_column(
        ForeignKey("bridges.id", ondelete="RESTRICT"), default=None, index=True
    )
    owner_uid: Mapped[int | None] = mapped_column(Integer, default=None)
    owner_gid: Mapped[int | None] = mapped_column(Integer, default=None)
    multi_queue: Mapped[bool] = mapped_column(Boolean, default=False)
    vnet_hdr: Mapped[bool] = mapped_column(Boolean, default=False)


class LinkName(Base):
    """Claims a kernel link name for one resource, so names are unique across kinds."""

    __tablename__ = "link_names"

    name: Mapped[str] = mapped_column(String(15), primary_key=True)
    resource: Mapped[str] = mapped_column(String(16))
    resource_id: Mapped[str] = mapped_column(String(36), index=True)


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
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class Vm(ResourceColumns, Base):
    """A virtual machine: desired shape and power state, and what its qemu is doing."""

    __tablename__ = "vms"

    vcpus: Mapped[int] = mapped_column(Integer, default=1)
    memory_mib: Mapped[int] = mapped_column(Integer, default=256)
    machine: Mapped[str] = mapped_column(String(16), default="pc")
    accelerator: Mapped[str] = mapped_column(String(8), default="auto")
    boot: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
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
    observed_uid: Mapped[int | None] = mapped_column(Integer, default=None)
    observed_gid: Mapped[int | None] = mapped_column(Integer, default=None)
    pid: Mapped[int | None] = mapped_column(Integer, default=None)
    accelerator_used: Mapped[str | None] = mapped_column(String(8), default=None)
    started_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    exit_code: Mapped[int | None] = mapped_column(Integer, default=None)
    last_output: Mapped[str | None] = mapped_column(Text, default=None)
    restarts: Mapped[int] = mapped_column(Integer, default=0)


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
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # user/socket/hub
    queues: Mapped[int] = mapped_column(Integer, default=1)
    vhost: Mapped[str] = mapped_column(String(8), default="auto")
    link_up: Mapped[bool] = mapped_column(Boolean, default=True)
    # on a managed network: the fixed address dnsmasq hands this MAC (a static lease)
    network_id: Mapped[str | None] = mapped_column(
        ForeignKey("networks.id", ondelete="SET NULL"), default=None, index=True
    )
    ipv4: Mapped[str | None] = mapped_column(String(15), default=None)

    __table_args__ = (UniqueConstraint("network_id", "ipv4", name="uq_vm_nics_network_ipv4"),)


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
    # observed
    dnsmasq_pid: Mapped[int | None] = mapped_column(Integer, default=None)
    restarts: Mapped[int] = mapped_column(Integer, default=0)


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
    saved: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    bridge_mac_before: Mapped[str | None] = mapped_column(String(17), default=None)
    steps: Mapped[list[str]] = mapped_column(JSON, default=list)  # of the last move or restore
