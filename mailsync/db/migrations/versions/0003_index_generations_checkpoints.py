"""index generations, full-sync checkpoints, provider token state, job progress

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# 0001 created the (mailbox_id, provider_message_id) unique constraint without a name:
# PostgreSQL named it itself; SQLite's reflected copy gets this name from the convention.
_SQLITE_CONVENTION = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _old_unique_name() -> str:
    if op.get_bind().dialect.name == "sqlite":
        return "uq_message_mailbox_id"
    return "message_mailbox_id_provider_message_id_key"


def upgrade() -> None:
    with op.batch_alter_table("mailbox") as batch_op:
        batch_op.add_column(
            sa.Column("generation", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("building_generation", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("checkpoint", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("checkpoint_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("auth_state_encrypted", sa.Text(), nullable=True))
    with op.batch_alter_table("message", naming_convention=_SQLITE_CONVENTION) as batch_op:
        batch_op.add_column(
            sa.Column("generation", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.drop_constraint(_old_unique_name(), type_="unique")
        batch_op.create_unique_constraint(
            "uq_message_generation_id", ["mailbox_id", "generation", "provider_message_id"]
        )
    with op.batch_alter_table("syncjob") as batch_op:
        batch_op.add_column(sa.Column("progress", sa.JSON(), nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("syncjob") as batch_op:
        batch_op.drop_column("progress")
    with op.batch_alter_table("message") as batch_op:
        batch_op.drop_constraint("uq_message_generation_id", type_="unique")
        batch_op.create_unique_constraint(_old_unique_name(), ["mailbox_id", "provider_message_id"])
        batch_op.drop_column("generation")
    with op.batch_alter_table("mailbox") as batch_op:
        for column in (
            "auth_state_encrypted", "checkpoint_at", "checkpoint", "building_generation",
            "generation",
        ):  # fmt: skip
            batch_op.drop_column(column)
