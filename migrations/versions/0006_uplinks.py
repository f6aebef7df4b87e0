"""uplinks: a bridge's NIC and the journal of moving the host's IP configuration

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 07:28:32.996827
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "uplinks",
        sa.Column("bridge_id", sa.String(length=36), nullable=False),
        sa.Column("permanent_mac", sa.String(length=17), nullable=True),
        sa.Column("probe_address", sa.String(length=45), nullable=True),
        sa.Column("probe_timeout", sa.Float(), nullable=False),
        sa.Column("take_mac", sa.Boolean(), nullable=False),
        sa.Column("dhcp", sa.String(length=8), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("saved", sa.JSON(), nullable=True),
        sa.Column("bridge_mac_before", sa.String(length=17), nullable=True),
        sa.Column("steps", sa.JSON(), nullable=False),
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
        sa.UniqueConstraint("bridge_id"),
        sa.UniqueConstraint("name"),
    )
    with op.batch_alter_table("uplinks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_uplinks_created_at"), ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("uplinks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_uplinks_created_at"))

    op.drop_table("uplinks")
