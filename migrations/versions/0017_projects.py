"""projects: tenants, their tokens, and a project on every resource (issue 11)

`projects` holds tenants (quotas, VLAN id ranges, shared segments); `api_tokens` their
bearer tokens, kept only as SHA-256 hashes. Every resource table gets `project_id`
(existing rows: the `default` project, app.domain.tenancy.DEFAULT_PROJECT_ID) and its name
becomes unique per project instead of across the table. Operations record who asked
(project, token, how they authenticated): the audit trail.

Revision ID: 0017_projects
Revises: 0016_vlanwatch
Create Date: 2026-12-01 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017_projects"
down_revision: str | None = "0016_vlanwatch"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT_PROJECT_ID = "00000000-0000-4000-8000-000000000000"  # app.domain.tenancy
RESOURCE_TABLES = ("bridges", "taps", "vms", "networks", "port_forwards", "uplinks", "vlans")
# the earlier migrations left the UNIQUE (name) constraints unnamed: this names them so
# batch mode can drop them (Alembic: "Dropping Unnamed or Named Foreign Key Constraints")
UNNAMED = {"uq": "uq_%(table_name)s_%(column_0_name)s"}
ROLES = "role IN ('admin', 'member', 'reader')"
HASH = "secret_hash GLOB '" + "[0-9a-f]" * 64 + "'"


def _json(column: str, kind: str) -> str:
    return f"json_valid({column}) AND json_type({column}) = '{kind}'"


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("quotas", sa.JSON(), nullable=False),
        sa.Column("vlan_ranges", sa.JSON(), nullable=False),
        sa.Column("shared_segments", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint(_json("quotas", "object"), name="ck_projects_quotas"),
        sa.CheckConstraint(_json("vlan_ranges", "array"), name="ck_projects_vlan_ranges"),
        sa.CheckConstraint(_json("shared_segments", "array"), name="ck_projects_shared_segments"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_index("ix_projects_created_at", "projects", ["created_at"])
    projects = sa.table(
        "projects",
        sa.column("id", sa.String()),
        sa.column("name", sa.String()),
        sa.column("description", sa.Text()),
        sa.column("quotas", sa.JSON()),
        sa.column("vlan_ranges", sa.JSON()),
        sa.column("shared_segments", sa.JSON()),
        sa.column("created_at", sa.DateTime()),
        sa.column("updated_at", sa.DateTime()),
    )
    op.execute(
        projects.insert().values(
            id=DEFAULT_PROJECT_ID,
            name="default",
            description="Everything made before projects existed; the admin's own project",
            quotas={},
            vlan_ranges=[],
            shared_segments=[],
            created_at=sa.func.current_timestamp(),
            updated_at=sa.func.current_timestamp(),
        )
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=False),
        sa.Column("role", sa.String(length=8), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.Column("last_used_at", sa.DateTime(), nullable=True),
        sa.CheckConstraint(ROLES, name="ck_api_tokens_role"),
        sa.CheckConstraint(HASH, name="ck_api_tokens_secret_hash"),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("secret_hash"),
    )
    op.create_index("ix_api_tokens_project_id", "api_tokens", ["project_id"])
    op.create_index("ix_api_tokens_created_at", "api_tokens", ["created_at"])
    for table in RESOURCE_TABLES:
        with op.batch_alter_table(table, recreate="always", naming_convention=UNNAMED) as batch:
            batch.add_column(
                sa.Column(
                    "project_id",
                    sa.String(length=36),
                    nullable=False,
                    server_default=DEFAULT_PROJECT_ID,
                )
            )
            batch.drop_constraint(f"uq_{table}_name", type_="unique")
            batch.create_unique_constraint(f"uq_{table}_project_id_name", ["project_id", "name"])
            batch.create_foreign_key(
                f"fk_{table}_project_id_projects",
                "projects",
                ["project_id"],
                ["id"],
                ondelete="RESTRICT",
            )
            batch.create_index(f"ix_{table}_project_id", ["project_id"])
    with op.batch_alter_table("operations") as batch:
        batch.add_column(
            sa.Column(
                "project_id",
                sa.String(length=36),
                nullable=False,
                server_default=DEFAULT_PROJECT_ID,
            )
        )
        batch.add_column(sa.Column("token_id", sa.String(length=36), nullable=True))
        batch.add_column(sa.Column("via", sa.String(length=16), nullable=True))
        batch.create_index("ix_operations_project_id", ["project_id"])
        batch.create_index("ix_operations_token_id", ["token_id"])


def downgrade() -> None:
    with op.batch_alter_table("operations") as batch:
        batch.drop_index("ix_operations_token_id")
        batch.drop_index("ix_operations_project_id")
        batch.drop_column("via")
        batch.drop_column("token_id")
        batch.drop_column("project_id")
    for table in RESOURCE_TABLES:
        with op.batch_alter_table(table, recreate="always") as batch:
            batch.drop_index(f"ix_{table}_project_id")
            batch.drop_constraint(f"fk_{table}_project_id_projects", type_="foreignkey")
            batch.drop_constraint(f"uq_{table}_project_id_name", type_="unique")
            batch.create_unique_constraint(f"uq_{table}_name", ["name"])
            batch.drop_column("project_id")
    op.drop_index("ix_api_tokens_created_at", table_name="api_tokens")
    op.drop_index("ix_api_tokens_project_id", table_name="api_tokens")
    op.drop_table("api_tokens")
    op.drop_index("ix_projects_created_at", table_name="projects")
    op.drop_table("projects")
