"""run leases: the mailbox-turn leases a flow run holds, for its crash hook to give back

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 11:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runlease",
        sa.Column("lease_id", sa.String(length=64), nullable=False),
        sa.Column("flow_run_id", sa.String(length=64), nullable=False),
        sa.Column("taken_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("lease_id"),
    )
    op.create_index("ix_runlease_flow_run_id", "runlease", ["flow_run_id"])


def downgrade() -> None:
    op.drop_index("ix_runlease_flow_run_id", table_name="runlease")
    op.drop_table("runlease")
