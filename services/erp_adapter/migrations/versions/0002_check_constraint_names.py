"""Give the CHECK constraint the name `tables.py` declares.

0001 spelled the full name out, and the naming convention prefixed it a second time
(`ck_integration_log_ck_integration_log_direction`). Renaming changes no rule.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE integration_log RENAME CONSTRAINT "
        "ck_integration_log_ck_integration_log_direction TO ck_integration_log_direction"
    )


def downgrade() -> None:
    op.execute(
        "ALTER TABLE integration_log RENAME CONSTRAINT "
        "ck_integration_log_direction TO ck_integration_log_ck_integration_log_direction"
    )
