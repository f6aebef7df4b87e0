"""events: the event id sequence, so ids increase across daemon restarts

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 18:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    table = op.create_table(
        "event_sequence",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("next_id", sa.Integer(), nullable=False),
        sa.CheckConstraint("id = 1", name="ck_event_sequence_one_row"),
        sa.CheckConstraint("next_id >= 1", name="ck_event_sequence_next_id"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(table, [{"id": 1, "next_id": 1}])


def downgrade() -> None:
    op.drop_table("event_sequence")
