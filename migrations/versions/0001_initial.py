"""bridges, taps, link names, operations

Revision ID: 0001
Revises:
Create Date: 2026-11-26 04:15:48.484131
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "bridges",
        sa.Column("stp", sa.Boolean(), nullable=False),
        sa.Column("forward_delay_cs", sa.Integer(), nullable=False),
        sa.Column("mtu", sa.Integer(), nullable=True),
        sa.Column("mac", sa.String(length=17), nullable=True),
        sa.Column("addresses", sa.JSON(), nullable=False),
        sa.Column("create_intent", sa.Boolean(), nullable=False),
        sa.Column("observed_ifindex", sa.Integer(), nullable=True),
        sa.Column("observed_mac", sa.String(length=17), nullable=True),
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
    with op.batch_alter_table("bridges", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_bridges_created_at"), ["created_at"], unique=False)

    op.create_table(
        "link_names",
        sa.Column("name", sa.String(length=15), nullable=False),
        sa.Column("resource", sa.String(length=16), nullable=False),
        sa.Column("resource_id", sa.String(length=36), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("link_names", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_link_names_resource_id"), ["resource_id"], unique=False
        )

    op.create_table(
        "operations",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("resource", sa.String(length=16), nullable=False),
        sa.Column("resource_id", sa.String(length=36), nullable=False),
        sa.Column("target_generation", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("operations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_operations_created_at"), ["created_at"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_operations_resource_id"), ["resource_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_operations_status"), ["status"], unique=False)

    op.create_table(
        "taps",
        sa.Column("bridge_id", sa.String(length=36), nullable=True),
        sa.Column("owner_uid", sa.Integer(), nullable=True),
        sa.Column("owner_gid", sa.Integer(), nullable=True),
        sa.Column("multi_queue", sa.Boolean(), nullable=False),
        sa.Column("vnet_hdr", sa.Boolean(), nullable=False),
        sa.Column("mtu", sa.Integer(), nullable=True),
        sa.Column("mac", sa.String(length=17), nullable=True),
        sa.Column("addresses", sa.JSON(), nullable=False),
        sa.Column("create_intent", sa.Boolean(), nullable=False),
        sa.Column("observed_ifindex", sa.Integer(), nullable=True),
        sa.Column("observed_mac", sa.String(length=17), nullable=True),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("observed_generation", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["bridge_id"], ["bridges.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    with op.batch_alter_table("taps", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_taps_bridge_id"), ["bridge_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_taps_created_at"), ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("taps", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_taps_created_at"))
        batch_op.drop_index(batch_op.f("ix_taps_bridge_id"))

    op.drop_table("taps")
    with op.batch_alter_table("operations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_operations_status"))
        batch_op.drop_index(batch_op.f("ix_operations_resource_id"))
        batch_op.drop_index(batch_op.f("ix_operations_created_at"))

    op.drop_table("operations")
    with op.batch_alter_table("link_names", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_link_names_resource_id"))

    op.drop_table("link_names")
    with op.batch_alter_table("bridges", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_bridges_created_at"))

    op.drop_table("bridges")
