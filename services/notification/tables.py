"""The notification service's tables (plus the shared outbox, inbox and audit log)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

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

# One row per (event, recipient, channel), ever: the unique key is the promise that one event
# never tells one recipient twice on one channel, whatever redelivers it.
notification_delivery = sa.Table(
    "notification_delivery",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
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
    sa.Column("html", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
    sa.Column("sent_at", sa.DateTime(timezone=True)),
    sa.Column("read_at", sa.DateTime(timezone=True)),
    # When the sender may next try a pending one (also the lease of a claimed attempt).
    sa.Column("next_attempt_at", sa.DateTime(timezone=True)),
    sa.UniqueConstraint("event_id", "recipient", "channel"),
    sa.Index("ix_notification_delivery_recipient", "recipient", "channel", "created_at"),
    sa.Index("ix_notification_delivery_due", "channel", "next_attempt_at",
             postgresql_where=sa.text("status = 'pending'")),
    sa.Index("ix_notification_delivery_event_id", "event_id"),
)

# The people directory the rules resolve against; imported from a CSV, changed rows only.
person = sa.Table(
    "person",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("roles", ARRAY(sa.Text), nullable=False, server_default="{}"),
    sa.Column("email", sa.Text),
    sa.Column("webhook_url", sa.Text),
    sa.Column("webhook_secret", sa.Text),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
)
