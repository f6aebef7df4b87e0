"""the address a VM NIC's MAC holds in its network's DHCP leases, and why it is not its fixed one

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 18:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("vm_nics", schema=None) as batch_op:
        batch_op.add_column(sa.Column("observed_ipv4", sa.String(length=15), nullable=True))
        batch_op.add_column(sa.Column("address_status_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("vm_nics", schema=None) as batch_op:
        batch_op.drop_column("address_status_reason")
        batch_op.drop_column("observed_ipv4")
