"""tags: Neutron's tags on the resources of the Neutron API (issue 12)

`tags` holds one row per (resource, resource_id, tag): `resource` is the Neutron resource
(network, subnet, port), `resource_id` the id of the row that stands for it (a bridge's or a
VLAN's for a network). Neutron's tag rules (neutron-lib's tag extension: at most 255
characters, no ',' or '/') are CHECKed. A tag change bumps its resource's generation
(revision_number).

Revision ID: 0022_tags
Revises: 0021_subnet_options
Create Date: 2026-12-01 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022_tags"
down_revision: str | None = "0021_subnet_options"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tags",
        sa.Column("resource", sa.String(length=16), nullable=False),
        sa.Column("resource_id", sa.String(length=36), nullable=False),
        sa.Column("tag", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("resource", "resource_id", "tag", name=op.f("pk_tags")),
        sa.CheckConstraint(
            "length(tag) BETWEEN 1 AND 255 AND instr(tag, ',') = 0 AND instr(tag, '/') = 0",
            name=op.f("ck_tags_tag"),
        ),
    )
    op.create_index(op.f("ix_tags_resource_id"), "tags", ["resource_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_tags_resource_id"), table_name="tags")
    op.drop_table("tags")
