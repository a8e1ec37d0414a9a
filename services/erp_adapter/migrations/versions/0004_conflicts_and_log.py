"""Conflicts, the dispatch replica, and an integration log that keeps what crossed and how.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_LOG_COLUMNS = ("connector", "order_id", "payload", "payload_sha256", "request", "response",
                "attempts", "last_error")


def upgrade() -> None:
    op.add_column("integration_log", sa.Column("connector", sa.Text))
    op.add_column("integration_log", sa.Column("order_id", sa.Text))
    op.add_column("integration_log", sa.Column("payload", JSONB))
    op.add_column("integration_log", sa.Column("payload_sha256", sa.Text))
    op.add_column("integration_log", sa.Column("request", JSONB))
    op.add_column("integration_log", sa.Column("response", JSONB))
    op.add_column("integration_log", sa.Column("attempts", sa.Integer, nullable=False,
                                               server_default="1"))
    op.add_column("integration_log", sa.Column("last_error", sa.Text))
    op.create_index("ix_integration_log_record_key", "integration_log", ["record_key"])
    op.create_index("ix_integration_log_order_id", "integration_log", ["order_id"])

    op.create_table(
        "dispatch_replica",
        sa.Column("dispatch_id", sa.Text, nullable=False),
        sa.Column("order_id", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("carrier", sa.Text),
        sa.Column("tracking_number", sa.Text),
        sa.Column("lines", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("shipped_at", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("dispatch_id", name="pk_dispatch_replica"),
    )
    op.create_index("ix_dispatch_replica_order_id", "dispatch_replica", ["order_id"])

    op.create_table(
        "conflict",
        sa.Column("id", UUID(as_uuid=True), nullable=False),
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
        sa.PrimaryKeyConstraint("id", name="pk_conflict"),
        sa.UniqueConstraint("entity", "entity_id", "field", "erp_value_sha256",
                            name="uq_conflict_entity_entity_id_field_erp_value_sha256"),
        sa.CheckConstraint("status IN ('open', 'resolved')", name="status"),
        sa.CheckConstraint("resolution IS NULL OR resolution IN ('keep_spine', 'erp_corrected')",
                           name="resolution"),
    )
    op.create_index("ix_conflict_status_detected_at", "conflict", ["status", "detected_at"])


def downgrade() -> None:
    op.drop_table("conflict")
    op.drop_table("dispatch_replica")
    op.drop_index("ix_integration_log_order_id", table_name="integration_log")
    op.drop_index("ix_integration_log_record_key", table_name="integration_log")
    for column in reversed(_LOG_COLUMNS):
        op.drop_column("integration_log", column)
