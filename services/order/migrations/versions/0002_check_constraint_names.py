"""Give the CHECK constraints the names `tables.py` declares.

0001 spelled the full names out, and the naming convention prefixed them a second time
(`ck_customer_order_ck_customer_order_status`). Renaming changes no rule.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# (table, name 0001 created, name tables.py declares)
_RENAMES = [
    ("customer_order", "ck_customer_order_ck_customer_order_status", "ck_customer_order_status"),
    ("customer_order", "ck_customer_order_ck_customer_order_version", "ck_customer_order_version"),
    ("order_line", "ck_order_line_ck_order_line_quantity_positive",
     "ck_order_line_quantity_positive"),
]


def upgrade() -> None:
    for table, old, new in _RENAMES:
        op.execute(f'ALTER TABLE "{table}" RENAME CONSTRAINT "{old}" TO "{new}"')


def downgrade() -> None:
    for table, old, new in reversed(_RENAMES):
        op.execute(f'ALTER TABLE "{table}" RENAME CONSTRAINT "{new}" TO "{old}"')
