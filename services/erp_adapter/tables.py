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
    sa.CheckConstraint("direction IN ('in', 'out')", name="direction"),
    sa.Index("ix_integration_log_kind_id", "kind", "id"),
    sa.Index("ix_integration_log_correlation_id", "correlation_id"),
)
