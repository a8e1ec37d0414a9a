"""The people directory, and what the sender needs of a delivery (HTML part, next attempt).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "person",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("roles", ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column("email", sa.Text),
        sa.Column("webhook_url", sa.Text),
        sa.Column("webhook_secret", sa.Text),
        sa.Column("updated_at", _TZ, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name="pk_person"),
    )
    op.add_column("notification_delivery", sa.Column("html", sa.Text))
    op.add_column("notification_delivery", sa.Column("next_attempt_at", _TZ))
    op.create_index("ix_notification_delivery_due", "notification_delivery",
                    ["channel", "next_attempt_at"], postgresql_where=sa.text("status = 'pending'"))
    op.create_index("ix_notification_delivery_event_id", "notification_delivery", ["event_id"])


def downgrade() -> None:
    op.drop_index("ix_notification_delivery_event_id", "notification_delivery")
    op.drop_index("ix_notification_delivery_due", "notification_delivery")
    op.drop_column("notification_delivery", "next_attempt_at")
    op.drop_column("notification_delivery", "html")
    op.drop_table("person")
