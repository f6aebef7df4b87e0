"""vlans: IEEE 802.1Q VLANs on a trunk bridge (issue 10)

One row per VLAN: its VID, its trunk (one of our bridges), the backend chosen at creation
(vlan_filtering or bridge_per_vlan, never auto) and what was asked, and the kernel objects the
supervisor observed. A VID is used once per trunk. The CHECK constraints say what the API's
validation says (VID 1-4094, IEEE 802.1Q-2018 9.6; the backend values), written out
literally like 0011's; tests/unit/test_migrations.py checks that they equal the model's.

Revision ID: 0013_vlans
Revises: 0012
Create Date: 2026-11-30 23:05:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013_vlans"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHECKS = {
    "deleted": "deleted IN (0, 1)",
    "generation": "generation >= 1",
    "observed_generation": "observed_generation >= 0",
    "status": "status IN ('pending', 'active', 'error', 'deleting')",
    "vlan_id": "vlan_id BETWEEN 1 AND 4094",
    "backend": "backend IN ('vlan_filtering', 'bridge_per_vlan')",
    "requested_backend": "requested_backend IN ('auto', 'vlan_filtering', 'bridge_per_vlan')",
    "observed_objects": "json_valid(observed_objects) AND json_type(observed_objects) = 'array'",
}


def upgrade() -> None:
    op.create_table(
        "vlans",
        sa.Column("vlan_id", sa.Integer(), nullable=False),
        sa.Column("trunk_id", sa.String(length=36), nullable=False),
        sa.Column("backend", sa.String(length=16), nullable=False),
        sa.Column("requested_backend", sa.String(length=16), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("observed_objects", sa.JSON(), nullable=False),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("observed_generation", sa.Integer(), nullable=False),
        *(sa.CheckConstraint(sql, name=f"ck_vlans_{what}") for what, sql in CHECKS.items()),
        sa.ForeignKeyConstraint(["trunk_id"], ["bridges.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("trunk_id", "vlan_id", name="uq_vlans_trunk_id_vlan_id"),
        sa.UniqueConstraint("name"),
    )
    with op.batch_alter_table("vlans", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_vlans_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_vlans_trunk_id"), ["trunk_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("vlans", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_vlans_trunk_id"))
        batch_op.drop_index(batch_op.f("ix_vlans_created_at"))
    op.drop_table("vlans")
