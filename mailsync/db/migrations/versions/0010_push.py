"""push channels: a mailbox's Gmail watch or Graph subscription, and a job's one mailbox

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 06:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mailboxpush",
        sa.Column("mailbox_id", sa.String(length=40), sa.ForeignKey("mailbox.id"), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("channel_id", sa.String(length=200), nullable=True),
        sa.Column("client_state_encrypted", sa.Text(), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("renewed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_notification_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=300), nullable=True),
        sa.Column("history_id", sa.String(length=32), nullable=True),
        sa.Column("queued_job_id", sa.String(length=40), nullable=True),
        sa.PrimaryKeyConstraint("mailbox_id"),
    )
    op.create_index("ix_mailboxpush_channel_id", "mailboxpush", ["channel_id"])
    with op.batch_alter_table("syncjob") as batch_op:
        batch_op.add_column(sa.Column("mailbox_id", sa.String(length=40), nullable=True))
        batch_op.create_index("ix_syncjob_mailbox_id", ["mailbox_id"])


def downgrade() -> None:
    with op.batch_alter_table("syncjob") as batch_op:
        batch_op.drop_index("ix_syncjob_mailbox_id")
        batch_op.drop_column("mailbox_id")
    op.drop_index("ix_mailboxpush_channel_id", table_name="mailboxpush")
    op.drop_table("mailboxpush")
