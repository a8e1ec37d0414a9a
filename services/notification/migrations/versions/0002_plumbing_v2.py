"""Plumbing v2: the inbox keeps each message's body digest, the outbox a queue for answers.

A message id already handled that arrives with another body is then refused as a conflict,
not dropped as a redelivery; and an event can also go to the `reply_to` queue its cause named.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

from shared.db.plumbing import downgrade_plumbing_v2, upgrade_plumbing_v2

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    upgrade_plumbing_v2(op)


def downgrade() -> None:
    downgrade_plumbing_v2(op)
