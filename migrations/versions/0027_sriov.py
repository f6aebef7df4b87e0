"""sriov: SR-IOV virtual functions held by VM NICs (issue 13 item 7)

`vf_claims`: one row per VF a NIC of the `sriov` backend holds (its PCI address the primary
key: two NICs never get one VF), with its PF, its index there, the VM and the NIC. The NIC's
stored `options` say the same for the worker; this table is what makes the claim unique and
what GET /v1/host/sriov reads to say who holds a VF. Existing rows: none.

Revision ID: 0027_sriov
Revises: 0026_offloads
Create Date: 2026-12-01 19:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0027_sriov"
down_revision: str | None = "0026_offloads"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PCI_GLOB = "[0-9a-f][0-9a-f][0-9a-f][0-9a-f]:[0-9a-f][0-9a-f]:[0-1][0-9a-f].[0-7]"


def upgrade() -> None:
    op.create_table(
        "vf_claims",
        sa.Column("pci_address", sa.String(length=12), nullable=False),
        sa.Column("pf", sa.String(length=15), nullable=False),
        sa.Column("vf_index", sa.Integer(), nullable=False),
        sa.Column("vm_id", sa.String(length=36), nullable=False),
        sa.Column("nic_id", sa.String(length=36), nullable=False),
        sa.CheckConstraint(f"pci_address GLOB '{PCI_GLOB}'", name="ck_vf_claims_pci_address"),
        sa.CheckConstraint("vf_index >= 0", name="ck_vf_claims_vf_index"),
        sa.PrimaryKeyConstraint("pci_address"),
        sa.UniqueConstraint("nic_id", name="uq_vf_claims_nic_id"),
    )
    op.create_index("ix_vf_claims_vm_id", "vf_claims", ["vm_id"])


def downgrade() -> None:
    op.drop_index("ix_vf_claims_vm_id", table_name="vf_claims")
    op.drop_table("vf_claims")
