"""ifname: the kernel name of each bridge and tap, apart from its user-facing name (issue 11)

Names are unique per project, so a bridge's `name` can no longer be its kernel link's name:
two projects may both have a `br0`. `ifname` holds the kernel name
(app.domain.names.link_ifname): the name itself in the default project, derived from the id
in any other. Every existing row is in the default project, so its ifname is its name, and
its link on the host stays as it is.

Revision ID: 0018_ifname
Revises: 0017_projects
Create Date: 2026-12-01 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018_ifname"
down_revision: str | None = "0017_projects"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LINK_TABLES = ("bridges", "taps")


def upgrade() -> None:
    for table in LINK_TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("ifname", sa.String(length=15), nullable=True))
        op.execute(sa.text(f"UPDATE {table} SET ifname = name"))
        with op.batch_alter_table(table, recreate="always") as batch:
            batch.alter_column("ifname", existing_type=sa.String(length=15), nullable=False)
            batch.create_unique_constraint(f"uq_{table}_ifname", ["ifname"])


def downgrade() -> None:
    for table in LINK_TABLES:
        with op.batch_alter_table(table, recreate="always") as batch:
            batch.drop_constraint(f"uq_{table}_ifname", type_="unique")
            batch.drop_column("ifname")
