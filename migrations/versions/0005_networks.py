"""networks, port forwards, fixed addresses

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 07:00:55.169963
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "networks",
        sa.Column("bridge_id", sa.String(length=36), nullable=True),
        sa.Column("tap_id", sa.String(length=36), nullable=True),
        sa.Column("subnet", sa.String(length=18), nullable=False),
        sa.Column("gateway", sa.String(length=15), nullable=False),
        sa.Column("nat", sa.Boolean(), nullable=False),
        sa.Column("nat_interface", sa.String(length=15), nullable=True),
        sa.Column("snat_address", sa.String(length=15), nullable=True),
        sa.Column("dhcp", sa.Boolean(), nullable=False),
        sa.Column("range_start", sa.String(length=15), nullable=False),
        sa.Column("range_end", sa.String(length=15), nullable=False),
        sa.Column("lease_seconds", sa.Integer(), nullable=False),
        sa.Column("domain", sa.String(length=253), nullable=True),
        sa.Column("dnsmasq_pid", sa.Integer(), nullable=True),
        sa.Column("restarts", sa.Integer(), nullable=False),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("observed_generation", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["bridge_id"], ["bridges.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["tap_id"], ["taps.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("bridge_id"),
        sa.UniqueConstraint("name"),
        sa.UniqueConstraint("tap_id"),
    )
    with op.batch_alter_table("networks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_networks_created_at"), ["created_at"], unique=False)

    op.create_table(
        "port_forwards",
        sa.Column("network_id", sa.String(length=36), nullable=False),
        sa.Column("vm_nic_id", sa.String(length=36), nullable=False),
        sa.Column("protocol", sa.String(length=4), nullable=False),
        sa.Column("listen_address", sa.String(length=15), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("end_port", sa.Integer(), nullable=False),
        sa.Column("target_port", sa.Integer(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("observed_generation", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["network_id"], ["networks.id"], ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["vm_nic_id"], ["vm_nics.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    with op.batch_alter_table("port_forwards", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_port_forwards_created_at"), ["created_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_port_forwards_network_id"), ["network_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_port_forwards_vm_nic_id"), ["vm_nic_id"], unique=False)

    with op.batch_alter_table("host_ports", schema=None) as batch_op:
        batch_op.add_column(sa.Column("end_port", sa.Integer(), nullable=True))

    with op.batch_alter_table("vm_nics", schema=None) as batch_op:
        batch_op.add_column(sa.Column("network_id", sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column("ipv4", sa.String(length=15), nullable=True))
        batch_op.create_index(batch_op.f("ix_vm_nics_network_id"), ["network_id"], unique=False)
        batch_op.create_unique_constraint("uq_vm_nics_network_ipv4", ["network_id", "ipv4"])
        batch_op.create_foreign_key(
            "fk_vm_nics_network_id", "networks", ["network_id"], ["id"], ondelete="SET NULL"
        )


def downgrade() -> None:
    with op.batch_alter_table("vm_nics", schema=None) as batch_op:
        batch_op.drop_constraint("fk_vm_nics_network_id", type_="foreignkey")
        batch_op.drop_constraint("uq_vm_nics_network_ipv4", type_="unique")
        batch_op.drop_index(batch_op.f("ix_vm_nics_network_id"))
        batch_op.drop_column("ipv4")
        batch_op.drop_column("network_id")

    with op.batch_alter_table("host_ports", schema=None) as batch_op:
        batch_op.drop_column("end_port")

    with op.batch_alter_table("port_forwards", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_port_forwards_vm_nic_id"))
        batch_op.drop_index(batch_op.f("ix_port_forwards_network_id"))
        batch_op.drop_index(batch_op.f("ix_port_forwards_created_at"))

    op.drop_table("port_forwards")
    with op.batch_alter_table("networks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_networks_created_at"))

    op.drop_table("networks")
