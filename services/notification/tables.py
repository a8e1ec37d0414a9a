"""The notification service's tables (plus the shared outbox, inbox and audit log)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, UUID

from shared.db.engine import new_metadata
from shared.db.plumbing import plumbing_tables

metadata = new_metadata()
outbox, inbox, audit_log = plumbing_tables(metadata)

# One row per event, ever: the inbox stops redeliveries, the primary key any other duplicate.
observed_event = sa.Table(
    "observed_event",
    metadata,
    sa.Column("event_id", UUID(as_uuid=True), primary_key=True),
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
    sa.Index("ix_observed_event_correlation_id", "correlation_id", "occurred_at"),
    sa.Index("ix_observed_event_type", "type", "occurred_at"),
    sa.Index("ix_observed_event_aggregate", "aggregate_type", "aggregate_id"),
    sa.Index("ix_observed_event_received_at", "received_at"),
)
