"""A project's usage against its quotas (GET /v1/projects/{project_id}/usage), shaped like
Neutron's quota details (GET /v2.0/quotas/{project_id}/details: per resource its `limit`
and what is `used`; here `usage`, the word the over-quota problem uses too)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from app.domain.tenancy import Quota


class QuotaUsage(BaseModel):
    limit: int | None = Field(
        description="The project's limit (vcpus: vCPUs, memory_mib: MiB); null: unlimited"
    )
    usage: int = Field(
        description="What the project uses: its resources that are not being deleted (vms, "
        "vcpus, memory_mib: every such VM, whatever its power state)"
    )


class QuotaUsages(BaseModel):
    """Every quota (app.domain.tenancy.Quota), by name."""

    vms: QuotaUsage
    vcpus: QuotaUsage = Field(description="vCPUs summed over the project's VMs")
    memory_mib: QuotaUsage = Field(description="MiB of memory summed over the project's VMs")
    taps: QuotaUsage = Field(
        description="Tap resources (a VM's NIC taps are the VM's, a port's tap the port's)"
    )
    bridges: QuotaUsage
    vlans: QuotaUsage
    segments: QuotaUsage = Field(
        description="Bridges and VLANs together (Neutron's `network` quota)"
    )
    networks: QuotaUsage
    port_forwards: QuotaUsage
    ports: QuotaUsage = Field(description="Port resources (/v1/ports)")


assert set(QuotaUsages.model_fields) == {q.value for q in Quota}, "one field per quota"


class ProjectUsage(BaseModel):
    """A project's quotas with their limits and usage."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "project_id": "8a6e1f0e-4f7b-4d1c-9d43-0b1f7a1c2d3e",
                    "name": "acme",
                    "quotas": {
                        q.value: {"limit": 10 if q is Quota.VMS else None, "usage": 0}
                        for q in Quota
                    },
                }
            ]
        }
    )

    project_id: str
    name: str = Field(description="The project's name")
    quotas: QuotaUsages
