"""Dispatch, dispatch exceptions, and the outbox/inbox/audit plumbing.

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
        "dispatch",
        sa.Column("id", UUID(as_uuid=True), nullable=False),
        sa.Column("order_id", sa.Text, nullable=False),
        sa.Column("external_ref", sa.Text),
        sa.Column("source", sa.Text),
        sa.Column("correlation_id", UUID(as_uuid=True), nullable=False),
        sa.Column("customer_id", sa.Text, nullable=False),
        sa.Column("requested_ship_date", sa.Date, nullable=False),
        sa.Column("priority", sa.Text, nullable=False),
        sa.Column("ship_to", JSONB, nullable=False),
        sa.Column("lines", JSONB, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("held_from", sa.Text),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("facts", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name="pk_dispatch"),
        sa.UniqueConstraint("order_id", name="uq_dispatch_order_id"),
    )
    op.create_index("ix_dispatch_status", "dispatch", ["status"])
    op.create_table(
        "dispatch_exception",
        sa.Column("id", UUID(as_uuid=True), nullable=False),
        sa.Column("dispatch_id", UUID(as_uuid=True), nullable=False),
        sa.Column("reason_code", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("blocking", sa.Boolean, nullable=False),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="open"),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("escalated_at", sa.DateTime(timezone=True)),
        sa.Column("resolved_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("id", name="pk_dispatch_exception"),
        sa.ForeignKeyConstraint(["dispatch_id"], ["dispatch.id"],
                                name="fk_dispatch_exception_dispatch_id_dispatch"),
    )
    op.create_index("ix_dispatch_exception_dispatch_id", "dispatch_exception", ["dispatch_id"])


def downgrade() -> None:
    op.drop_table("dispatch_exception")
    op.drop_table("dispatch")
    downgrade_plumbing_v1(op)
