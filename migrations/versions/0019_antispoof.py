"""antispoof: per-NIC anti-spoofing (issue 11, item 6)

`vm_nics.port_security` (Neutron's port_security_enabled: the NIC may send only from its own
MAC and addresses, app.domain.port_security), stored resolved (never NULL; existing NICs: 0,
as before); `allowed_addresses` (Neutron's allowed_address_pairs: IPv4/IPv6 CIDRs the guest
may also send from, a JSON array, [] for none); `port_security_reason` (observed: why its
rules could not be loaded, NULL when they were).

Revision ID: 0019_antispoof
Revises: 0018_ifname
Create Date: 2026-12-01 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019_antispoof"
down_revision: str | None = "0018_ifname"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NIC_CHECKS = {
    "port_security": "port_security IN (0, 1)",
    "allowed_addresses": "json_valid(allowed_addresses) AND json_type(allowed_addresses) = 'array'",
}


def upgrade() -> None:
    # SQLite cannot add a constraint to a table: batch mode copies it into a new one
    with op.batch_alter_table("vm_nics", recreate="always") as batch_op:
        batch_op.add_column(
            sa.Column("port_security", sa.Boolean(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("allowed_addresses", sa.JSON(), nullable=False, server_default="[]")
        )
        batch_op.add_column(sa.Column("port_security_reason", sa.Text(), nullable=True))
        for what, check in NIC_CHECKS.items():
            batch_op.create_check_constraint(f"ck_vm_nics_{what}", check)


def downgrade() -> None:
    with op.batch_alter_table("vm_nics", recreate="always") as batch_op:
        for what in NIC_CHECKS:
            batch_op.drop_constraint(f"ck_vm_nics_{what}", type_="check")
        batch_op.drop_column("port_security_reason")
        batch_op.drop_column("allowed_addresses")
        batch_op.drop_column("port_security")
