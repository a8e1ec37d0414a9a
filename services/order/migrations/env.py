"""Alembic environment of the order service."""

from alembic import context

from services.order.tables import metadata
from shared.db.migrate import run_env

run_env(context, metadata)
