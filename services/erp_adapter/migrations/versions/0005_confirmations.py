"""Outbound delivery confirmations and the run-time mode of each connector.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "connector",
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("mode", sa.Text, nullable=False, server_default="shadow"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("updated_by", sa.Text, nullable=False, server_default="migration"),
        sa.PrimaryKeyConstraint("name", name="pk_connector"),
        sa.CheckConstraint("mode IN ('shadow', 'approve', 'auto')", name="mode"),
    )
    # Every connector starts conservative: it records what it would send and sends nothing.
    op.execute("INSERT INTO connector (name) VALUES ('file'), ('http')")

    op.create_table(
        "confirmation",
        sa.Column("id", UUID(as_uuid=True), nullable=False),
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
        sa.PrimaryKeyConstraint("id", name="pk_confirmation"),
        sa.UniqueConstraint("event_id", name="uq_confirmation_event_id"),
        sa.CheckConstraint("kind IN ('shipped', 'corrected')", name="kind"),
        sa.CheckConstraint("status IN ('shadowed', 'awaiting_approval', 'pending', 'posted', "
                           "'acknowledged', 'failed')", name="status"),
    )
    op.create_index("ix_confirmation_status_next_attempt_at", "confirmation",
                    ["status", "next_attempt_at"])
    op.create_index("ix_confirmation_dispatch_id", "confirmation", ["dispatch_id"])


def downgrade() -> None:
    op.drop_table("confirmation")
    op.drop_table("connector")
