"""Alembic environment of the erp_adapter service."""

from alembic import context

from services.erp_adapter.tables import metadata
from shared.db.migrate import run_env

run_env(context, metadata)
