"""mailbox state (status, last job and error, connected_at) and OAuth consent-flow states

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 06:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("mailbox") as batch_op:
        batch_op.add_column(
            sa.Column("status", sa.String(length=16), nullable=False, server_default="active")
        )
        batch_op.add_column(sa.Column("connected_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("last_job_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("last_error_code", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("last_error_message", sa.Text(), nullable=True))
    op.execute("UPDATE mailbox SET connected_at = created_at WHERE connected_at IS NULL")
    op.create_table(
        "oauthstate",
        sa.Column("id", sa.String(length=40), primary_key=True),
        sa.Column("state_hash", sa.String(length=64), nullable=False, unique=True),
        sa.Column(
            "workspace_id", sa.String(length=64), sa.ForeignKey("workspace.id"), nullable=False
        ),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("redirect_uri", sa.Text(), nullable=False),
        sa.Column("mailbox_id", sa.String(length=40), nullable=True),
        sa.Column("flow_encrypted", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_oauthstate_workspace_id", "oauthstate", ["workspace_id"])
    op.create_index("ix_oauthstate_expires_at", "oauthstate", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_oauthstate_expires_at", table_name="oauthstate")
    op.drop_index("ix_oauthstate_workspace_id", table_name="oauthstate")
    op.drop_table("oauthstate")
    with op.batch_alter_table("mailbox") as batch_op:
        batch_op.drop_column("last_error_message")
        batch_op.drop_column("last_error_code")
        batch_op.drop_column("last_job_id")
        batch_op.drop_column("connected_at")
        batch_op.drop_column("status")
