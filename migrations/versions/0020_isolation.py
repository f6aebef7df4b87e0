"""isolation: bridge port isolation for taps and VM NICs (issue 11)

`taps.isolated` and `vm_nics.isolated`: the bridge port flag IFLA_BRPORT_ISOLATED (`bridge
link set dev X isolated on`; an isolated port forwards only to ports that are not isolated,
Documentation/networking/bridge.rst), wanted on the tap (only while it is on a bridge, the
CHECK says so); `taps.observed_isolated` is what netlink last reported (null: no bridge
port). Existing rows: not isolated, as before.

Revision ID: 0020_isolation
Revises: 0019_antispoof
Create Date: 2026-12-01 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020_isolation"
down_revision: str | None = "0019_antispoof"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # SQLite cannot add a constraint to a table: batch mode copies it into a new one
    with op.batch_alter_table("taps", recreate="always") as batch_op:
        batch_op.add_column(sa.Column("isolated", sa.Boolean(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("observed_isolated", sa.Boolean(), nullable=True))
        batch_op.create_check_constraint("ck_taps_isolated", "isolated IN (0, 1)")
        batch_op.create_check_constraint(
            "ck_taps_isolated_port", "isolated = 0 OR bridge_id IS NOT NULL OR deleted = 1"
        )
    with op.batch_alter_table("vm_nics", recreate="always") as batch_op:
        batch_op.add_column(sa.Column("isolated", sa.Boolean(), nullable=False, server_default="0"))
        batch_op.create_check_constraint("ck_vm_nics_isolated", "isolated IN (0, 1)")
        batch_op.create_check_constraint(
            "ck_vm_nics_isolated_port", "isolated = 0 OR bridge_id IS NOT NULL"
        )


def downgrade() -> None:
    with op.batch_alter_table("vm_nics", recreate="always") as batch_op:
        batch_op.drop_constraint("ck_vm_nics_isolated_port", type_="check")
        batch_op.drop_constraint("ck_vm_nics_isolated", type_="check")
        batch_op.drop_column("isolated")
    with op.batch_alter_table("taps", recreate="always") as batch_op:
        batch_op.drop_constraint("ck_taps_isolated_port", type_="check")
        batch_op.drop_constraint("ck_taps_isolated", type_="check")
        batch_op.drop_column("observed_isolated")
        batch_op.drop_column("isolated")
