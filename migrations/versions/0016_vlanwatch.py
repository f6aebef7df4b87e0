"""vlanwatch: a trunk remembers that kvmnetd switched its VLAN filtering on (issue 10)

`bridges.vlan_filtering_ours` is set (before the switch) when the supervisor turns
vlan_filtering on for a VLAN of ours, and cleared when it turns it off again after the
trunk's last filtering VLAN went. A bridge whose filtering someone else turned on keeps it.
Existing rows: 0 (a trunk filtering today was switched on by an older version, which did
not record it; it keeps filtering, as before).

Revision ID: 0016_vlanwatch
Revises: 0015_network_vlans
Create Date: 2026-12-01 02:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016_vlanwatch"
down_revision: str | None = "0015_network_vlans"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # SQLite cannot add a constraint to a table: batch mode copies it into a new one
    with op.batch_alter_table("bridges", recreate="always") as batch_op:
        batch_op.add_column(
            sa.Column("vlan_filtering_ours", sa.Boolean(), nullable=False, server_default="0")
        )
        batch_op.create_check_constraint(
            "ck_bridges_vlan_filtering_ours", "vlan_filtering_ours IN (0, 1)"
        )


def downgrade() -> None:
    with op.batch_alter_table("bridges", recreate="always") as batch_op:
        batch_op.drop_constraint("ck_bridges_vlan_filtering_ours", type_="check")
        batch_op.drop_column("vlan_filtering_ours")
