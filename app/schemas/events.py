"""The payload of one server-sent event on /v1/events."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class EventOut(BaseModel):
    """One state change. SSE `id` is `id`, SSE `event` is `type`."""

    model_config = ConfigDict(title="Event")

    id: int = Field(description="Increasing; send as Last-Event-ID to resume")
    type: str = Field(examples=["tap.active", "bridge.deleted", "tap.drift_repaired"])
    resource: str = Field(examples=["tap"])
    resource_id: str
    name: str
    project_id: str | None = Field(
        None,
        description="The resource's project; null: about the host as a whole (such events "
        "reach admins only)",
    )
    status: str = Field(description="pending, active, error, deleting, or deleted")
    status_reason: str | None = None
    generation: int
    observed_generation: int
    time: float = Field(description="Unix time")
    data: dict[str, Any] | None = Field(
        None,
        description="The event's own payload: for `vm.qmp.<EVENT>`, QEMU's event data "
        '(e.g. SHUTDOWN: {"guest": true, "reason": "guest-shutdown"}); for bridge and tap '
        "events, the link's kernel name (ifname) and, from the supervisor, the link as "
        "netlink reports it (ifindex, mac, mtu in bytes, oper_state); "
        "`<bridge|tap>.observed` says only that these changed",
    )
