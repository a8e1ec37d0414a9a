"""Exceptions with a lifecycle, four-eyes approvals, and messages parked for a dispatch to come.

A dispatch held before exceptions were records keeps its hold: its hold facts become one open
blocking exception, so resolving it returns the dispatch to the state it left.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    for column in (
        sa.Column("version", sa.Integer, nullable=False, server_default="1"),
        sa.Column("opened_by", sa.Text, nullable=False, server_default=""),
        sa.Column("escalated_from", sa.Text),
        sa.Column("resolution", sa.Text),
        sa.Column("acknowledged_at", _TZ),
        sa.Column("updated_at", _TZ, nullable=False, server_default=sa.func.now()),
    ):
        op.add_column("dispatch_exception", column)
    op.create_index("ix_dispatch_exception_due", "dispatch_exception", ["due_at"],
                    postgresql_where=sa.text("status IN ('open', 'acknowledged')"))
    op.execute("""
        INSERT INTO dispatch_exception (id, dispatch_id, reason_code, description, blocking, owner,
                                        due_at, status, opened_by)
        SELECT gen_random_uuid(), id, facts->>'hold_reason_code', '', true, facts->>'hold_owner',
               (facts->>'hold_due_at')::timestamptz, 'open', 'migration'
        FROM dispatch
        WHERE status = 'on_hold' AND facts ? 'hold_owner'
          AND NOT EXISTS (SELECT FROM dispatch_exception x WHERE x.dispatch_id = dispatch.id)
    """)
    op.create_table(
        "dispatch_approval",
        sa.Column("id", UUID(as_uuid=True), nullable=False),
        sa.Column("dispatch_id", UUID(as_uuid=True), nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("requested_by", sa.Text, nullable=False),
        sa.Column("requested_roles", JSONB, nullable=False),
        sa.Column("request", JSONB, nullable=False),
        sa.Column("dispatch_version", sa.Integer, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("decided_by", sa.Text),
        sa.Column("note", sa.Text),
        sa.Column("requested_at", _TZ, nullable=False, server_default=sa.func.now()),
        sa.Column("decided_at", _TZ),
        sa.PrimaryKeyConstraint("id", name="pk_dispatch_approval"),
        sa.ForeignKeyConstraint(["dispatch_id"], ["dispatch.id"],
                                name="fk_dispatch_approval_dispatch_id_dispatch"),
    )
    op.create_index("ix_dispatch_approval_dispatch_id", "dispatch_approval", ["dispatch_id"])
    op.create_index("ix_dispatch_approval_status", "dispatch_approval", ["status"])
    op.create_table(
        "dispatch_parked",
        sa.Column("id", UUID(as_uuid=True), nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("order_id", sa.Text),
        sa.Column("source", sa.Text),
        sa.Column("external_ref", sa.Text),
        sa.Column("payload", JSONB, nullable=False),
        sa.Column("event_id", sa.Text, nullable=False),
        sa.Column("parked_at", _TZ, nullable=False, server_default=sa.func.now()),
        sa.Column("applied_at", _TZ),
        sa.PrimaryKeyConstraint("id", name="pk_dispatch_parked"),
    )
    op.create_index("ix_dispatch_parked_order_id", "dispatch_parked", ["order_id"],
                    postgresql_where=sa.text("applied_at IS NULL"))
    op.create_index("ix_dispatch_parked_ref", "dispatch_parked", ["source", "external_ref"],
                    postgresql_where=sa.text("applied_at IS NULL"))


def downgrade() -> None:
    op.drop_table("dispatch_parked")
    op.drop_table("dispatch_approval")
    op.drop_index("ix_dispatch_exception_due", table_name="dispatch_exception")
    for name in ("updated_at", "acknowledged_at", "resolution", "escalated_from", "opened_by",
                 "version"):
        op.drop_column("dispatch_exception", name)
