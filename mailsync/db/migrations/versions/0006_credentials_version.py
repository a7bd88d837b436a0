"""a mailbox's credentials version: what a sync's writes are bound to

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 19:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("mailbox") as batch_op:
        batch_op.add_column(
            sa.Column("credentials_version", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("mailbox") as batch_op:
        batch_op.drop_column("credentials_version")
