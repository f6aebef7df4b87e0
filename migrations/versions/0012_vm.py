"""VM actions from every status (PATCH, restart pending) and the user qemu runs as

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30 18:40:00

- intent_generation: the generation of the last power intent (start/stop/kill); a PATCH
  bumps `generation` but is no new intent (it never starts a crashed VM).
- spec_generation: the generation of the last change qemu reads at start (PATCH of vcpus,
  memory_mib, machine, accelerator, boot, run_as); launched_generation: the generation the
  running qemu was launched from (observed). restart_pending = running and launched <
  spec.
- run_as_uid/gid stay as they were (NULL: the daemon's unprivileged qemu user);
  observed_uid/gid: the real uid/gid of the running qemu, read from /proc/PID/status.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("vms", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("intent_generation", sa.Integer(), server_default="1", nullable=False)
        )
        batch_op.add_column(
            sa.Column("spec_generation", sa.Integer(), server_default="1", nullable=False)
        )
        batch_op.add_column(sa.Column("launched_generation", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("observed_uid", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("observed_gid", sa.Integer(), nullable=True))
    op.execute("UPDATE vms SET intent_generation = generation")


def downgrade() -> None:
    with op.batch_alter_table("vms", schema=None) as batch_op:
        for column in (
            "observed_gid",
            "observed_uid",
            "launched_generation",
            "spec_generation",
            "intent_generation",
        ):
            batch_op.drop_column(column)
