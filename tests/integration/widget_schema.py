"""A throwaway service schema for plumbing tests: the v1 plumbing tables plus a `widget` table."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection

from shared.db.engine import new_metadata
from shared.db.plumbing import plumbing_tables, upgrade_plumbing_v1

METADATA = new_metadata()
OUTBOX, INBOX, AUDIT = plumbing_tables(METADATA)
WIDGET = sa.Table(
    "widget",
    METADATA,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("n", sa.Integer),
)


def create_schema(sync_conn: Connection) -> None:
    """What a service's first Alembic revision does, plus the test's own business table."""
    upgrade_plumbing_v1(Operations(MigrationContext.configure(sync_conn)))
    WIDGET.create(sync_conn)
