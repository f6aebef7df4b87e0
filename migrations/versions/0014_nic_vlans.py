"""nic_vlans: VM NICs and taps on a VLAN, and trunk NICs (issue 10, item 2)

A bridge NIC or a tap resource may be an access port of one VLAN (`vlan_id`, its bridge is
the VLAN's trunk); a bridge NIC may instead be a trunk NIC that carries VIDs of its bridge's
VLANs tagged (`vlan_tagged`, a JSON array, [] for none) plus an optional native VLAN sent
untagged (`native_vlan`). The CHECK constraints say what the API's validation says, written
out literally like 0011's (tests/unit/test_migrations.py compares them with the models'):
access and trunk exclude each other, a native VLAN needs tagged ones, a VLAN needs a bridge,
VIDs are 1-4094 (IEEE 802.1Q-2018 9.6). Existing rows get none of these (no VLAN).

Revision ID: 0014_nic_vlans
Revises: 0013_vlans
Create Date: 2026-12-01 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014_nic_vlans"
down_revision: str | None = "0013_vlans"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NIC_CHECKS = {
    "vlan_tagged": "json_valid(vlan_tagged) AND json_type(vlan_tagged) = 'array'",
    "native_vlan": "native_vlan IS NULL OR native_vlan BETWEEN 1 AND 4094",
    "vlan_port": "(vlan_id IS NULL OR json_array_length(vlan_tagged) = 0) AND "
    "(native_vlan IS NULL OR json_array_length(vlan_tagged) > 0) AND "
    "(bridge_id IS NOT NULL OR (vlan_id IS NULL AND json_array_length(vlan_tagged) = 0))",
}
TAP_CHECKS = {"vlan_id": "vlan_id IS NULL OR bridge_id IS NOT NULL"}


def upgrade() -> None:
    with op.batch_alter_table("vm_nics", schema=None) as batch_op:
        batch_op.add_column(sa.Column("vlan_id", sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column("vlan_tagged", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("native_vlan", sa.Integer(), nullable=True))
    op.execute("UPDATE vm_nics SET vlan_tagged = '[]'")
    # SQLite cannot add a constraint to a table: batch mode copies it into a new one
    with op.batch_alter_table("vm_nics", recreate="always") as batch_op:
        batch_op.alter_column("vlan_tagged", existing_type=sa.JSON(), nullable=False)
        batch_op.create_index(batch_op.f("ix_vm_nics_vlan_id"), ["vlan_id"], unique=False)
        batch_op.create_foreign_key(
            "fk_vm_nics_vlan_id_vlans", "vlans", ["vlan_id"], ["id"], ondelete="RESTRICT"
        )
        for what, check in NIC_CHECKS.items():
            batch_op.create_check_constraint(f"ck_vm_nics_{what}", check)
    with op.batch_alter_table("taps", recreate="always") as batch_op:
        batch_op.add_column(sa.Column("vlan_id", sa.String(length=36), nullable=True))
        batch_op.create_index(batch_op.f("ix_taps_vlan_id"), ["vlan_id"], unique=False)
        batch_op.create_foreign_key(
            "fk_taps_vlan_id_vlans", "vlans", ["vlan_id"], ["id"], ondelete="RESTRICT"
        )
        for what, check in TAP_CHECKS.items():
            batch_op.create_check_constraint(f"ck_taps_{what}", check)


def downgrade() -> None:
    with op.batch_alter_table("taps", recreate="always") as batch_op:
        for what in TAP_CHECKS:
            batch_op.drop_constraint(f"ck_taps_{what}", type_="check")
        batch_op.drop_constraint("fk_taps_vlan_id_vlans", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_taps_vlan_id"))
        batch_op.drop_column("vlan_id")
    with op.batch_alter_table("vm_nics", recreate="always") as batch_op:
        for what in NIC_CHECKS:
            batch_op.drop_constraint(f"ck_vm_nics_{what}", type_="check")
        batch_op.drop_constraint("fk_vm_nics_vlan_id_vlans", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_vm_nics_vlan_id"))
        batch_op.drop_column("native_vlan")
        batch_op.drop_column("vlan_tagged")
        batch_op.drop_column("vlan_id")
