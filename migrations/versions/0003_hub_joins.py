"""a VM NIC without a model joins a hub

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 06:13:27.093762
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("vm_nics", schema=None) as batch_op:
        batch_op.alter_column("model", existing_type=sa.VARCHAR(length=32), nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("vm_nics", schema=None) as batch_op:
        batch_op.alter_column("model", existing_type=sa.VARCHAR(length=32), nullable=False)
