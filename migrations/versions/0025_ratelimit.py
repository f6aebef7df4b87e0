"""ratelimit: per-NIC rate limits (issue 13 item 4)

`vm_nics.ingress_kbps` (kbit/s towards the guest), `vm_nics.egress_kbps` (kbit/s from the
guest) and `vm_nics.burst_kib` (the token bucket in KiB), applied with tc on the NIC's tap
(app.domain.rate_limits, app.host.tc). Null: no limit (burst: derived from the rate). Only a
bridge NIC's tap carries them, and a burst only comes with a rate (the CHECK says so).
Existing rows: no limits, as before.

Revision ID: 0025_ratelimit
Revises: 0024_hotplug
Create Date: 2026-12-01 16:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0025_ratelimit"
down_revision: str | None = "0024_hotplug"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RATE = "BETWEEN 8 AND 34000000"  # app.domain.rate_limits.RATE_KBPS
BURST = "BETWEEN 2 AND 1048576"  # BURST_KIB
LIMIT = (
    "(ingress_kbps IS NULL AND egress_kbps IS NULL AND burst_kib IS NULL) OR "
    "(bridge_id IS NOT NULL AND (ingress_kbps IS NOT NULL OR egress_kbps IS NOT NULL))"
)


def upgrade() -> None:
    # SQLite cannot add a constraint to a table: batch mode copies it into a new one
    with op.batch_alter_table("vm_nics", recreate="always") as batch_op:
        batch_op.add_column(sa.Column("ingress_kbps", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("egress_kbps", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("burst_kib", sa.Integer(), nullable=True))
        batch_op.create_check_constraint(
            "ck_vm_nics_ingress_kbps", f"ingress_kbps IS NULL OR ingress_kbps {RATE}"
        )
        batch_op.create_check_constraint(
            "ck_vm_nics_egress_kbps", f"egress_kbps IS NULL OR egress_kbps {RATE}"
        )
        batch_op.create_check_constraint(
            "ck_vm_nics_burst_kib", f"burst_kib IS NULL OR burst_kib {BURST}"
        )
        batch_op.create_check_constraint("ck_vm_nics_rate_limit", LIMIT)


def downgrade() -> None:
    with op.batch_alter_table("vm_nics", recreate="always") as batch_op:
        for name in ("rate_limit", "burst_kib", "egress_kbps", "ingress_kbps"):
            batch_op.drop_constraint(f"ck_vm_nics_{name}", type_="check")
        for column in ("burst_kib", "egress_kbps", "ingress_kbps"):
            batch_op.drop_column(column)
