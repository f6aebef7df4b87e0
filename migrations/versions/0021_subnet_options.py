"""subnet_options: what a managed network's DHCP tells guests besides their address (issue 12)

`networks.dns_nameservers`: DHCP option 6 servers, a JSON array of IPv4 addresses ([]: the
gateway, where dnsmasq answers DNS); `networks.host_routes`: DHCP option 121 routes (RFC
3442), a JSON array of {"destination": CIDR, "nexthop": IPv4} objects ([]: none);
`networks.description` (Neutron's subnet description; NULL: none). Neutron's subnet
dns_nameservers, host_routes and description map onto them. Existing rows: [] and NULL,
which is what they served before.

Revision ID: 0021_subnet_options
Revises: 0020_isolation
Create Date: 2026-12-01 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021_subnet_options"
down_revision: str | None = "0020_isolation"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# app.domain.networks MAX_NAMESERVERS, MAX_HOST_ROUTES (a migration never imports the app)
LISTS = {"dns_nameservers": 5, "host_routes": 20}


def _check(column: str, most: int) -> str:
    return (
        f"json_valid({column}) AND json_type({column}) = 'array' AND "
        f"json_array_length({column}) <= {most}"
    )


def upgrade() -> None:
    # SQLite cannot add a constraint to a table: batch mode copies it into a new one
    with op.batch_alter_table("networks", recreate="always") as batch_op:
        for column, most in LISTS.items():
            batch_op.add_column(sa.Column(column, sa.JSON(), nullable=False, server_default="[]"))
            batch_op.create_check_constraint(f"ck_networks_{column}", _check(column, most))
        batch_op.add_column(sa.Column("description", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("networks", recreate="always") as batch_op:
        batch_op.drop_column("description")
        for column in reversed(LISTS):
            batch_op.drop_constraint(f"ck_networks_{column}", type_="check")
            batch_op.drop_column(column)
