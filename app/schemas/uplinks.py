"""A bridge's uplink (the how-to's eth0 in br0) as the API accepts and shows it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from app.schemas.common import LinkNameStr, RequestModel, ResourceState


class UplinkSet(RequestModel):
    """Enslave a host NIC into the bridge and move the host's IP configuration onto it."""

    interface: LinkNameStr = Field(description="The host NIC, e.g. eth0")
    probe_address: str | None = Field(
        None,
        max_length=45,
        json_schema_extra={
            "anyOf": [
                {"type": "string", "format": "ipv4"},
                {"type": "string", "format": "ipv6"},
                {"type": "null"},
            ]
        },
        description="Checked (ICMP echo) through the bridge before the move is kept; "
        "null or left out: the NIC's default gateway",
    )
    probe_timeout: float = Field(5.0, ge=0.5, le=60, description="Seconds")
    take_mac: bool = Field(
        True,
        description="The bridge takes the NIC's MAC (DHCP leases and switch port security keep "
        "working); false or a bridge with a pinned `mac` keeps the bridge's own",
    )
    dhcp: Literal["refuse", "move"] = Field(
        "refuse",
        description="When a DHCP client manages the NIC's address: `refuse` (explain and change "
        "nothing) or `move` (move the leased address as it is)",
    )


class UplinkOut(ResourceState):
    """`status`: pending (moving), active (attached), error (refused or rolled back, with the
    reason), deleting (moving back). `phase` is the journal: detached, moving, attached,
    restoring."""

    bridge_id: str
    interface: str = Field(description="The NIC's name when attached")
    present_as: str | None = Field(
        description="The NIC's current name (found by its permanent MAC), null if absent"
    )
    permanent_mac: str | None
    carrier: bool | None
    probe_address: str | None
    probe_timeout: float
    take_mac: bool
    dhcp: str
    phase: str
    moved: dict[str, Any] | None = Field(
        description="The NIC's configuration as it was before the move (what a detach restores)"
    )
    steps: list[str] = Field(description="What the last move or restore did, in order")


class UplinkPlan(BaseModel):
    """A dry run: what would be done, and whether it would be refused."""

    interface: str
    bridge: str = Field(description="The bridge's kernel name (its `ifname`), as the steps name it")
    action: Literal["attach", "detach"]
    steps: list[str]
    addresses: list[str]
    routes: list[str]
    probe_address: str | None
    dhcp_clients: list[str]
    refused: str | None = Field(description="Why it would not be done, if it would not")
