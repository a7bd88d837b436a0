"""webhooks: endpoints, the event outbox, deliveries and their attempts

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _ts(name: str, nullable: bool = True) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "webhookendpoint",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("workspace_id", sa.String(length=64), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("events", sa.JSON(), nullable=False),
        sa.Column("secret_encrypted", sa.Text(), nullable=False),
        sa.Column("previous_secret_encrypted", sa.Text(), nullable=True),
        _ts("previous_secret_expires_at"),
        sa.Column("status", sa.String(length=16), nullable=False),
        _ts("failing_since"),
        _ts("disabled_at"),
        _ts("created_at", nullable=False),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspace.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("webhookendpoint") as batch_op:
        batch_op.create_index(
            batch_op.f("ix_webhookendpoint_workspace_id"), ["workspace_id"], unique=False
        )

    op.create_table(
        "webhookevent",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("workspace_id", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("subject_id", sa.String(length=40), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        _ts("created_at", nullable=False),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspace.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("webhookevent") as batch_op:
        batch_op.create_index(
            batch_op.f("ix_webhookevent_subject_id"), ["subject_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_webhookevent_workspace_id"), ["workspace_id"], unique=False
        )

    op.create_table(
        "webhookdelivery",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("event_id", sa.String(length=40), nullable=False),
        sa.Column("endpoint_id", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _ts("next_attempt_at"),
        _ts("retry_until"),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        _ts("delivered_at"),
        _ts("created_at", nullable=False),
        sa.ForeignKeyConstraint(["endpoint_id"], ["webhookendpoint.id"]),
        sa.ForeignKeyConstraint(["event_id"], ["webhookevent.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id", "endpoint_id", name="uq_webhookdelivery_event_endpoint"),
    )
    with op.batch_alter_table("webhookdelivery") as batch_op:
        batch_op.create_index(
            batch_op.f("ix_webhookdelivery_endpoint_id"), ["endpoint_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_webhookdelivery_next_attempt_at"), ["next_attempt_at"], unique=False
        )

    op.create_table(
        "webhookattempt",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("delivery_id", sa.String(length=40), nullable=False),
        _ts("started_at", nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("error", sa.String(length=300), nullable=True),
        sa.ForeignKeyConstraint(["delivery_id"], ["webhookdelivery.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("webhookattempt") as batch_op:
        batch_op.create_index(
            batch_op.f("ix_webhookattempt_delivery_id"), ["delivery_id"], unique=False
        )


def downgrade() -> None:
    for table, indexes in (
        ("webhookattempt", ["ix_webhookattempt_delivery_id"]),
        (
            "webhookdelivery",
            ["ix_webhookdelivery_next_attempt_at", "ix_webhookdelivery_endpoint_id"],
        ),
        ("webhookevent", ["ix_webhookevent_workspace_id", "ix_webhookevent_subject_id"]),
        ("webhookendpoint", ["ix_webhookendpoint_workspace_id"]),
    ):
        with op.batch_alter_table(table) as batch_op:
            for index in indexes:
                batch_op.drop_index(index)
        op.drop_table(table)
