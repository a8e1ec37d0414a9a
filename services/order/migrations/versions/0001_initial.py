"""Orders, order lines, customer and product replicas, idempotency keys, and the plumbing.

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


def _now() -> sa.sql.elements.TextClause:
    return sa.text("now()")


def upgrade() -> None:
    upgrade_plumbing_v1(op)
    op.create_table(
        "customer",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=_now()),
        sa.PrimaryKeyConstraint("id", name="pk_customer"),
    )
    op.create_table(
        "product",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("uom", sa.Text, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=_now()),
        sa.PrimaryKeyConstraint("id", name="pk_product"),
    )
    op.create_table(
        "customer_order",
        sa.Column("id", UUID(as_uuid=True), nullable=False),
        sa.Column("source", sa.Text,
                  comment="outside system that submitted it; NULL: entered in Spine"),
        sa.Column("external_ref", sa.Text,
                  comment="the submitter's reference: its idempotency key"),
        sa.Column("customer_id", sa.Text, nullable=False),
        sa.Column("requested_ship_date", sa.Date, nullable=False),
        sa.Column("priority", sa.Text, nullable=False),
        sa.Column("ship_to", JSONB, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("correlation_id", UUID(as_uuid=True), nullable=False),
        sa.Column("created_by", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=_now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=_now()),
        sa.PrimaryKeyConstraint("id", name="pk_customer_order"),
        sa.UniqueConstraint("source", "external_ref",
                            name="uq_customer_order_source_external_ref"),
        sa.CheckConstraint("status IN ('received', 'confirmed', 'cancelled')",
                           name="ck_customer_order_status"),
        sa.CheckConstraint("version >= 1", name="ck_customer_order_version"),
    )
    op.create_index(
        "uq_customer_order_local_external_ref",
        "customer_order",
        ["external_ref"],
        unique=True,
        postgresql_where=sa.text("source IS NULL AND external_ref IS NOT NULL"),
    )
    op.create_index("ix_customer_order_status", "customer_order", ["status"])
    op.create_index("ix_customer_order_customer_id", "customer_order", ["customer_id"])
    op.create_index("ix_customer_order_created_at", "customer_order", ["created_at"])
    op.create_table(
        "order_line",
        sa.Column("order_id", UUID(as_uuid=True), nullable=False),
        sa.Column("line_no", sa.Integer, nullable=False),
        sa.Column("product_id", sa.Text, nullable=False),
        sa.Column("quantity", sa.Numeric(14, 3), nullable=False),
        sa.Column("uom", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("order_id", "line_no", name="pk_order_line"),
        sa.ForeignKeyConstraint(["order_id"], ["customer_order.id"],
                                name="fk_order_line_order_id_customer_order"),
        sa.CheckConstraint("quantity > 0", name="ck_order_line_quantity_positive"),
    )
    op.create_table(
        "idempotency_key",
        sa.Column("principal", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("request_hash", sa.Text, nullable=False),
        sa.Column("response_status", sa.Integer),
        sa.Column("response_body", JSONB),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=_now()),
        sa.PrimaryKeyConstraint("principal", "key", name="pk_idempotency_key"),
    )


def downgrade() -> None:
    op.drop_table("idempotency_key")
    op.drop_table("order_line")
    op.drop_table("customer_order")
    op.drop_table("product")
    op.drop_table("customer")
    downgrade_plumbing_v1(op)
