"""ports: the port resource (issue 12, Neutron's port)

Table `ports`: an attachment point on one L2 segment (an untagged port of a bridge or an
access port of a VLAN, exactly one), its tap (a `taps` row of its own, kernel name `tap` +
the port id's first 11 hex digits), its guest MAC (unique among ports), at most one fixed
IPv4 address on the segment's managed network (unique per network, with the VM NICs'
fixed addresses: the services check both tables), device_id/device_owner (who plugs it),
admin_state_up, description, port_security and allowed_addresses (as VM NICs).

Revision ID: 0023_ports
Revises: 0022_tags
Create Date: 2026-12-01 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0023_ports"
down_revision: str | None = "0022_tags"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MAC_GLOB = ":".join(["[0-9a-f][0-9a-f]"] * 6)
CHECKS = {
    "deleted": "deleted IN (0, 1)",
    "generation": "generation >= 1",
    "observed_generation": "observed_generation >= 0",
    "status": "status IN ('pending', 'active', 'error', 'deleting')",
    "admin_state_up": "admin_state_up IN (0, 1)",
    "port_security": "port_security IN (0, 1)",
    "allowed_addresses": "json_valid(allowed_addresses) AND json_type(allowed_addresses) = 'array'",
    "mac_address": f"mac_address GLOB '{MAC_GLOB}'",
    "one_segment": "deleted = 1 OR (bridge_id IS NULL) + (vlan_id IS NULL) = 1",
}


def upgrade() -> None:
    op.create_table(
        "ports",
        sa.Column("bridge_id", sa.String(length=36), nullable=True),
        sa.Column("vlan_id", sa.String(length=36), nullable=True),
        sa.Column("tap_id", sa.String(length=36), nullable=False),
        sa.Column("mac_address", sa.String(length=17), nullable=False),
        sa.Column("network_id", sa.String(length=36), nullable=True),
        sa.Column("ipv4", sa.String(length=15), nullable=True),
        sa.Column("device_id", sa.String(length=255), nullable=False),
        sa.Column("device_owner", sa.String(length=255), nullable=False),
        sa.Column("admin_state_up", sa.Boolean(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("port_security", sa.Boolean(), nullable=False),
        sa.Column("allowed_addresses", sa.JSON(), nullable=False),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("observed_generation", sa.Integer(), nullable=False),
        *(sa.CheckConstraint(sql, name=f"ck_ports_{what}") for what, sql in CHECKS.items()),
        sa.ForeignKeyConstraint(["bridge_id"], ["bridges.id"], ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["vlan_id"], ["vlans.id"], ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["tap_id"], ["taps.id"], ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["network_id"], ["networks.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_id", "name", name="uq_ports_project_id_name"),
        sa.UniqueConstraint("network_id", "ipv4", name="uq_ports_network_ipv4"),
        sa.UniqueConstraint("mac_address"),
        sa.UniqueConstraint("tap_id"),
    )
    with op.batch_alter_table("ports", schema=None) as batch_op:
        for column in ("bridge_id", "vlan_id", "network_id", "project_id", "created_at"):
            batch_op.create_index(batch_op.f(f"ix_ports_{column}"), [column], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("ports", schema=None) as batch_op:
        for column in ("created_at", "project_id", "network_id", "vlan_id", "bridge_id"):
            batch_op.drop_index(batch_op.f(f"ix_ports_{column}"))
    op.drop_table("ports")
