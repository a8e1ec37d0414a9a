"""Observed events, and the outbox/inbox/audit plumbing.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

from shared.db.plumbing import downgrade_plumbing_v1, upgrade_plumbing_v1

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    upgrade_plumbing_v1(op)
    op.create_table(
        "observed_event",
        sa.Column("event_id", UUID(as_uuid=True), nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("producer", sa.Text, nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("correlation_id", UUID(as_uuid=True), nullable=False),
        sa.Column("causation_id", UUID(as_uuid=True)),
        sa.Column("actor_id", sa.Text, nullable=False),
        sa.Column("actor_role", sa.Text, nullable=False),
        sa.Column("aggregate_type", sa.Text),
        sa.Column("aggregate_id", sa.Text),
        sa.Column("aggregate_version", sa.Integer),
        sa.Column("data", JSONB, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("event_id", name="pk_observed_event"),
    )
    op.create_index("ix_observed_event_correlation_id", "observed_event",
                    ["correlation_id", "occurred_at"])
    op.create_index("ix_observed_event_type", "observed_event", ["type", "occurred_at"])
    op.create_index("ix_observed_event_aggregate", "observed_event",
                    ["aggregate_type", "aggregate_id"])
    op.create_index("ix_observed_event_received_at", "observed_event", ["received_at"])


def downgrade() -> None:
    op.drop_table("observed_event")
    downgrade_plumbing_v1(op)
