"""offloads: a virtio NIC's checksum, TSO and GSO switches (issue 13 item 3)

`vm_nics.offload_checksum`, `offload_tso`, `offload_gso`: null (qemu's default), 1 or 0, as
app.domain.nics.offloads resolves them (checksum off turns the other two off: virtio 1.2,
5.1.3.1, which the CHECK says too). Existing rows: all null, qemu's defaults as before.

Revision ID: 0026_offloads
Revises: 0025_ratelimit
Create Date: 2026-12-01 19:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0026_offloads"
down_revision: str | None = "0025_ratelimit"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("offload_checksum", "offload_tso", "offload_gso")
SEGMENTATION = "offload_checksum IS NOT 0 OR (offload_tso = 0 AND offload_gso = 0)"


def upgrade() -> None:
    # SQLite cannot add a constraint to a table: batch mode copies it into a new one
    with op.batch_alter_table("vm_nics", recreate="always") as batch_op:
        for column in COLUMNS:
            batch_op.add_column(sa.Column(column, sa.Boolean(), nullable=True))
            batch_op.create_check_constraint(f"ck_vm_nics_{column}", f"{column} IN (0, 1)")
        batch_op.create_check_constraint("ck_vm_nics_offload_segmentation", SEGMENTATION)


def downgrade() -> None:
    with op.batch_alter_table("vm_nics", recreate="always") as batch_op:
        batch_op.drop_constraint("ck_vm_nics_offload_segmentation", type_="check")
        for column in reversed(COLUMNS):
            batch_op.drop_constraint(f"ck_vm_nics_{column}", type_="check")
            batch_op.drop_column(column)
