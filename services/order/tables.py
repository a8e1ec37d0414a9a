"""The order service's tables (plus the shared outbox, inbox and audit log)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, UUID

from services.order.domain import Status
from shared.db.engine import new_metadata
from shared.db.plumbing import plumbing_tables

metadata = new_metadata()
outbox, inbox, audit_log = plumbing_tables(metadata)

_STATUSES = ", ".join(f"'{s.value}'" for s in Status)

# Replicas of ERP master data. `version` is the ERP's per-record version: only a newer one
# replaces what is stored, so a late or repeated erp.*.upserted cannot roll a record back.
customer = sa.Table(
    "customer",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

product = sa.Table(
    "product",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("uom", sa.Text, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

# No foreign key to `customer`: the replica is a cache of someone else's data, checked when an
# order arrives; it must never stop the ERP from deactivating or the replica from being rebuilt.
customer_order = sa.Table(
    "customer_order",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    sa.Column("source", sa.Text, comment="outside system that submitted it; NULL: entered in Spine"),
    sa.Column("external_ref", sa.Text, comment="the submitter's reference: its idempotency key"),
    sa.Column("customer_id", sa.Text, nullable=False),
    sa.Column("requested_ship_date", sa.Date, nullable=False),
    sa.Column("priority", sa.Text, nullable=False),
    sa.Column("ship_to", JSONB, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("correlation_id", UUID(as_uuid=True), nullable=False),
    sa.Column("created_by", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    # One order per (system, reference), however often the system resends it.
    sa.UniqueConstraint("source", "external_ref"),
    sa.CheckConstraint(f"status IN ({_STATUSES})", name="status"),
    sa.CheckConstraint("version >= 1", name="version"),
    # NULLs are distinct in the constraint above, so orders entered in Spine get their own rule.
    sa.Index(
        "uq_customer_order_local_external_ref",
        "external_ref",
        unique=True,
        postgresql_where=sa.text("source IS NULL AND external_ref IS NOT NULL"),
    ),
    sa.Index("ix_customer_order_status", "status"),
    sa.Index("ix_customer_order_customer_id", "customer_id"),
    sa.Index("ix_customer_order_created_at", "created_at"),
)

order_line = sa.Table(
    "order_line",
    metadata,
    sa.Column("order_id", UUID(as_uuid=True), sa.ForeignKey("customer_order.id"), primary_key=True),
    sa.Column("line_no", sa.Integer, primary_key=True),
    sa.Column("product_id", sa.Text, nullable=False),
    sa.Column("quantity", sa.Numeric(14, 3), nullable=False),
    sa.Column("uom", sa.Text, nullable=False),
    sa.CheckConstraint("quantity > 0", name="quantity_positive"),
)

# The first response to an `Idempotency-Key`, replayed when the same caller sends it again.
idempotency_key = sa.Table(
    "idempotency_key",
    metadata,
    sa.Column("principal", sa.Text, primary_key=True),
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("request_hash", sa.Text, nullable=False),
    # Empty only inside the transaction that claimed the key: a concurrent request with the same
    # key waits on this row, then reads the response committed with the order.
    sa.Column("response_status", sa.Integer),
    sa.Column("response_body", JSONB),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)
