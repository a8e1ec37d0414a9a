"""Alembic environment of the dispatch service."""

from alembic import context

from services.dispatch.tables import metadata
from shared.db.migrate import run_env

run_env(context, metadata)
