"""hotplug: NICs added to and removed from VMs after creation (issue 13 item 6)

`vms.next_nic_index`: the index the VM's next added NIC gets. A NIC keeps its index for
life (qemu's ids nic<i>/net<i> and its tap's name come from it), so an index is never
given twice while the VM exists: not even after the NIC that had it was removed, whose
device a guest may not have released yet. NULL (VMs from before): one past the highest.

Revision ID: 0024_hotplug
Revises: 0023_ports
Create Date: 2026-12-01 16:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0024_hotplug"
down_revision: str | None = "0023_ports"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.add_column(sa.Column("next_nic_index", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.drop_column("next_nic_index")
