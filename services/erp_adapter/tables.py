"""The erp_adapter's tables (plus the shared outbox, inbox and audit log)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, UUID

from services.erp_adapter.domain import Kind
from shared.db.engine import new_metadata
from shared.db.plumbing import plumbing_tables

metadata = new_metadata()
outbox, inbox, audit_log = plumbing_tables(metadata)

import_run = sa.Table(
    "import_run",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    sa.Column("source_filename", sa.Text, nullable=False),
    sa.Column("source_format", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("actor_role", sa.Text, nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
    # NULL until the last batch commits: a run that died half-way shows as unfinished.
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("rows_total", sa.Integer, nullable=False),
    sa.Column("created", sa.Integer, nullable=False, server_default="0"),
    sa.Column("updated", sa.Integer, nullable=False, server_default="0"),
    sa.Column("unchanged", sa.Integer, nullable=False, server_default="0"),
    sa.Column("rejected", sa.Integer, nullable=False, server_default="0"),
    sa.Column("errors", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
    sa.Index("ix_import_run_started_at", "started_at"),
)


def _master_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("content_hash", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("last_import_id", UUID(as_uuid=True), sa.ForeignKey("import_run.id")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
    ]


erp_customer = sa.Table(
    "erp_customer",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    *_master_columns(),
)

erp_product = sa.Table(
    "erp_product",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("uom", sa.Text, nullable=False),
    *_master_columns(),
)

MASTER_TABLES: dict[Kind, sa.Table] = {Kind.CUSTOMERS: erp_customer, Kind.PRODUCTS: erp_product}

integration_log = sa.Table(
    "integration_log",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
    sa.Column("direction", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("record_key", sa.Text),
    sa.Column("outcome", sa.Text, nullable=False),
    sa.Column("detail", sa.Text, nullable=False, server_default=""),
    sa.Column("correlation_id", UUID(as_uuid=True)),
    # How it crossed: file-import, http-records (inbound); file, http (outbound connectors).
    sa.Column("connector", sa.Text),
    sa.Column("order_id", sa.Text),  # the order it is about, where known (the timeline's key)
    # What crossed: the payload itself, or only its digest where it is large.
    sa.Column("payload", JSONB),
    sa.Column("payload_sha256", sa.Text),
    sa.Column("request", JSONB),  # how it was sent or received (endpoint, file name, headers)
    sa.Column("response", JSONB),  # what the other side answered
    sa.Column("attempts", sa.Integer, nullable=False, server_default="1"),
    sa.Column("last_error", sa.Text),
    sa.CheckConstraint("direction IN ('in', 'out')", name="direction"),
    sa.Index("ix_integration_log_kind_id", "kind", "id"),
    sa.Index("ix_integration_log_correlation_id", "correlation_id"),
    sa.Index("ix_integration_log_record_key", "record_key"),
    sa.Index("ix_integration_log_order_id", "order_id"),
)

# What the adapter learned of each dispatch from `dispatch.*` events: Spine's values, as the
# dispatch service published them (a replica; the dispatch service is the only writer).
dispatch_replica = sa.Table(
    "dispatch_replica",
    metadata,
    sa.Column("dispatch_id", sa.Text, primary_key=True),
    sa.Column("order_id", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("carrier", sa.Text),
    sa.Column("tracking_number", sa.Text),
    # [{line_no, shipped_quantity, backorder_quantity}] once shipped (corrections applied).
    sa.Column("lines", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
    sa.Column("shipped_at", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
    sa.Index("ix_dispatch_replica_order_id", "order_id"),
)

# An inbound ERP value for a field Spine owns: never applied, kept with both values until a
# person resolves it. One row per (entity, id, field, ERP value): the ERP repeating itself
# counts `occurrences` instead of adding rows.
conflict = sa.Table(
    "conflict",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    sa.Column("entity", sa.Text, nullable=False),
    sa.Column("entity_id", sa.Text, nullable=False),
    sa.Column("field", sa.Text, nullable=False),
    sa.Column("erp_value", JSONB, nullable=False),
    sa.Column("erp_value_sha256", sa.Text, nullable=False),
    sa.Column("spine_value", JSONB),
    sa.Column("spine_value_known", sa.Boolean, nullable=False),
    sa.Column("spine_owner", sa.Text, nullable=False),
    sa.Column("erp_record", JSONB, nullable=False),
    sa.Column("connector", sa.Text, nullable=False),
    sa.Column("order_id", sa.Text),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("resolution", sa.Text),
    sa.Column("reason", sa.Text),
    sa.Column("resolved_by", sa.Text),
    sa.Column("occurrences", sa.Integer, nullable=False, server_default="1"),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("correlation_id", UUID(as_uuid=True), nullable=False),
    sa.Column("detected_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
    sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
    sa.Column("resolved_at", sa.DateTime(timezone=True)),
    sa.UniqueConstraint("entity", "entity_id", "field", "erp_value_sha256"),
    sa.CheckConstraint("status IN ('open', 'resolved')", name="status"),
    sa.CheckConstraint("resolution IS NULL OR resolution IN ('keep_spine', 'erp_corrected')",
                       name="resolution"),
    sa.Index("ix_conflict_status_detected_at", "status", "detected_at"),
)

# Each outbound connector's mode, read by the subscriber and the push worker at every use, so
# a change takes effect without a restart.
connector = sa.Table(
    "connector",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("mode", sa.Text, nullable=False, server_default="shadow"),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
    sa.Column("updated_by", sa.Text, nullable=False, server_default="migration"),
    sa.CheckConstraint("mode IN ('shadow', 'approve', 'auto')", name="mode"),
)

# One delivery confirmation per causing dispatch event; its event id is the idempotency key the
# ERP sees. `seq` orders the export files.
confirmation = sa.Table(
    "confirmation",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    sa.Column("seq", sa.BigInteger, sa.Identity(), nullable=False),
    sa.Column("event_id", UUID(as_uuid=True), nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("dispatch_id", sa.Text, nullable=False),
    sa.Column("order_id", sa.Text, nullable=False),
    sa.Column("dispatch_version", sa.Integer, nullable=False),
    sa.Column("connector", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("document", JSONB, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text),
    sa.Column("response", JSONB),
    sa.Column("approved_by", sa.Text),
    sa.Column("version", sa.Integer, nullable=False, server_default="1"),
    sa.Column("correlation_id", UUID(as_uuid=True), nullable=False),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
    sa.Column("posted_at", sa.DateTime(timezone=True)),
    sa.Column("acknowledged_at", sa.DateTime(timezone=True)),
    sa.UniqueConstraint("event_id"),
    sa.CheckConstraint("kind IN ('shipped', 'corrected')", name="kind"),
    sa.CheckConstraint("status IN ('shadowed', 'awaiting_approval', 'pending', 'posted', "
                       "'acknowledged', 'failed')", name="status"),
    # The push worker's claim: due pending rows, oldest first.
    sa.Index("ix_confirmation_status_next_attempt_at", "status", "next_attempt_at"),
    sa.Index("ix_confirmation_dispatch_id", "dispatch_id"),
)
