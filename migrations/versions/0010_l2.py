"""L2 stability: every bridge keeps one MAC (a generated one unless pinned), links record
their observed MTU and operational state, and a VM NIC may set its MTU

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 18:40:00.000000
"""

import os
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _generated_mac() -> str:
    """A locally administered unicast MAC (IEEE 802: bit 1 of the first octet set, bit 0
    clear), as app.domain.links.generate_mac makes them (kept here as of this revision)."""
    raw = bytearray(os.urandom(6))
    raw[0] = (raw[0] & 0xFC) | 0x02
    return raw.hex(":")


def upgrade() -> None:
    for table in ("bridges", "taps"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("observed_mtu", sa.Integer(), nullable=True))
            batch_op.add_column(
                sa.Column("observed_oper_state", sa.String(length=16), nullable=True)
            )
    with op.batch_alter_table("bridges", schema=None) as batch_op:
        batch_op.add_column(sa.Column("generated_mac", sa.String(length=17), nullable=True))
    bridges = sa.table("bridges", sa.column("id", sa.String), sa.column("generated_mac"))
    connection = op.get_bind()
    for (bridge_id,) in connection.execute(sa.select(bridges.c.id)).all():
        connection.execute(
            bridges.update().where(bridges.c.id == bridge_id).values(generated_mac=_generated_mac())
        )
    with op.batch_alter_table("bridges", schema=None) as batch_op:
        batch_op.alter_column("generated_mac", existing_type=sa.String(length=17), nullable=False)
    with op.batch_alter_table("vm_nics", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mtu", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("vm_nics", schema=None) as batch_op:
        batch_op.drop_column("mtu")
    with op.batch_alter_table("bridges", schema=None) as batch_op:
        batch_op.drop_column("generated_mac")
    for table in ("taps", "bridges"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("observed_oper_state")
            batch_op.drop_column("observed_mtu")
