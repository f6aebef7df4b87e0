"""vms, nics, host ports

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 05:25:43.133345
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "host_ports",
        sa.Column("protocol", sa.String(length=4), nullable=False),
        sa.Column("address", sa.String(length=45), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(length=16), nullable=False),
        sa.Column("owner_id", sa.String(length=36), nullable=False),
        sa.PrimaryKeyConstraint("protocol", "address", "port"),
    )
    with op.batch_alter_table("host_ports", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_host_ports_owner_id"), ["owner_id"], unique=False)

    op.create_table(
        "vms",
        sa.Column("vcpus", sa.Integer(), nullable=False),
        sa.Column("memory_mib", sa.Integer(), nullable=False),
        sa.Column("machine", sa.String(length=16), nullable=False),
        sa.Column("accelerator", sa.String(length=8), nullable=False),
        sa.Column("boot", sa.JSON(), nullable=False),
        sa.Column("power_state", sa.String(length=16), nullable=False),
        sa.Column("restart_policy", sa.String(length=16), nullable=False),
        sa.Column("run_as_uid", sa.Integer(), nullable=True),
        sa.Column("run_as_gid", sa.Integer(), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("accelerator_used", sa.String(length=8), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("last_output", sa.Text(), nullable=True),
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
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    with op.batch_alter_table("vms", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_vms_created_at"), ["created_at"], unique=False)

    op.create_table(
        "vm_nics",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("vm_id", sa.String(length=36), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=32), nullable=False),
        sa.Column("mac", sa.String(length=17), nullable=False),
        sa.Column("backend", sa.String(length=16), nullable=False),
        sa.Column("tap_name", sa.String(length=15), nullable=True),
        sa.Column("bridge_id", sa.String(length=36), nullable=True),
        sa.Column("tap_id", sa.String(length=36), nullable=True),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("queues", sa.Integer(), nullable=False),
        sa.Column("vhost", sa.String(length=8), nullable=False),
        sa.Column("link_up", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["bridge_id"], ["bridges.id"], ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["tap_id"], ["taps.id"], ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["vm_id"], ["vms.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("mac"),
    )
    with op.batch_alter_table("vm_nics", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_vm_nics_bridge_id"), ["bridge_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_vm_nics_tap_id"), ["tap_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_vm_nics_vm_id"), ["vm_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("vm_nics", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_vm_nics_vm_id"))
        batch_op.drop_index(batch_op.f("ix_vm_nics_tap_id"))
        batch_op.drop_index(batch_op.f("ix_vm_nics_bridge_id"))

    op.drop_table("vm_nics")
    with op.batch_alter_table("vms", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_vms_created_at"))

    op.drop_table("vms")
    with op.batch_alter_table("host_ports", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_host_ports_owner_id"))

    op.drop_table("host_ports")
