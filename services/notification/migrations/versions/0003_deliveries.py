"""Notification deliveries: who the rules told of which event, on which channel.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "notification_delivery",
        sa.Column("id", UUID(as_uuid=True), nullable=False),
        sa.Column("event_id", UUID(as_uuid=True), nullable=False),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("rule_id", sa.Text, nullable=False),
        sa.Column("recipient", sa.Text, nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_at", _TZ, nullable=False, server_default=sa.func.now()),
        sa.Column("sent_at", _TZ),
        sa.Column("read_at", _TZ),
        sa.PrimaryKeyConstraint("id", name="pk_notification_delivery"),
        sa.UniqueConstraint("event_id", "recipient", "channel",
                            name="uq_notification_delivery_event_id_recipient_channel"),
    )
    op.create_index("ix_notification_delivery_recipient", "notification_delivery",
                    ["recipient", "channel", "created_at"])


def downgrade() -> None:
    op.drop_table("notification_delivery")
