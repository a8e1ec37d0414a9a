"""ERP master copies, import runs, the integration log, and the outbox/inbox/audit plumbing.

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


def _master_columns(table: str) -> list[sa.schema.SchemaItem]:
    return [
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("content_hash", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("last_import_id", UUID(as_uuid=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name=f"pk_{table}"),
        sa.ForeignKeyConstraint(["last_import_id"], ["import_run.id"],
                                name=f"fk_{table}_last_import_id_import_run"),
    ]


def upgrade() -> None:
    upgrade_plumbing_v1(op)
    op.create_table(
        "import_run",
        sa.Column("id", UUID(as_uuid=True), nullable=False),
        sa.Column("source_filename", sa.Text, nullable=False),
        sa.Column("source_format", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("actor_role", sa.Text, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("rows_total", sa.Integer, nullable=False),
        sa.Column("created", sa.Integer, nullable=False, server_default="0"),
        sa.Column("updated", sa.Integer, nullable=False, server_default="0"),
        sa.Column("unchanged", sa.Integer, nullable=False, server_default="0"),
        sa.Column("rejected", sa.Integer, nullable=False, server_default="0"),
        sa.Column("errors", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.PrimaryKeyConstraint("id", name="pk_import_run"),
    )
    op.create_index("ix_import_run_started_at", "import_run", ["started_at"])
    op.create_table(
        "erp_customer",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        *_master_columns("erp_customer"),
    )
    op.create_table(
        "erp_product",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("uom", sa.Text, nullable=False),
        *_master_columns("erp_product"),
    )
    op.create_table(
        "integration_log",
        sa.Column("id", sa.BigInteger, sa.Identity(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("direction", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("record_key", sa.Text),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("detail", sa.Text, nullable=False, server_default=""),
        sa.Column("correlation_id", UUID(as_uuid=True)),
        sa.PrimaryKeyConstraint("id", name="pk_integration_log"),
        sa.CheckConstraint("direction IN ('in', 'out')", name="ck_integration_log_direction"),
    )
    op.create_index("ix_integration_log_kind_id", "integration_log", ["kind", "id"])
    op.create_index("ix_integration_log_correlation_id", "integration_log", ["correlation_id"])


def downgrade() -> None:
    op.drop_table("integration_log")
    op.drop_table("erp_product")
    op.drop_table("erp_customer")
    op.drop_table("import_run")
    downgrade_plumbing_v1(op)
