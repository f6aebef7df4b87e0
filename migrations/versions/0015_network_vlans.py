"""network_vlans: a managed network on a VLAN (issue 10, item 3)

A managed network may be on a VLAN instead of a bridge or a routed tap (`vlan_id`); its
gateway then lives on the VLAN's L3 interface (app.domain.vlans.l3_interface_name). A live
network is on exactly one of the three (CHECK, as the API validates); a deleted one may
outlive its link (SET NULL). Existing rows are on a bridge or tap and stay so.

Revision ID: 0015_network_vlans
Revises: 0014_nic_vlans
Create Date: 2026-12-01 01:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015_network_vlans"
down_revision: str | None = "0014_nic_vlans"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ONE_LINK = (
    "deleted = 1 OR (bridge_id IS NOT NULL) + (tap_id IS NOT NULL) + (vlan_id IS NOT NULL) = 1"
)


def upgrade() -> None:
    # SQLite cannot add a constraint to a table: batch mode copies it into a new one
    with op.batch_alter_table("networks", recreate="always") as batch_op:
        batch_op.add_column(sa.Column("vlan_id", sa.String(length=36), nullable=True))
        batch_op.create_unique_constraint("uq_networks_vlan_id", ["vlan_id"])
        batch_op.create_foreign_key(
            "fk_networks_vlan_id_vlans", "vlans", ["vlan_id"], ["id"], ondelete="SET NULL"
        )
        batch_op.create_check_constraint("ck_networks_one_link", ONE_LINK)


def downgrade() -> None:
    with op.batch_alter_table("networks", recreate="always") as batch_op:
        batch_op.drop_constraint("ck_networks_one_link", type_="check")
        batch_op.drop_constraint("fk_networks_vlan_id_vlans", type_="foreignkey")
        batch_op.drop_constraint("uq_networks_vlan_id", type_="unique")
        batch_op.drop_column("vlan_id")
