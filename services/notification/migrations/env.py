"""Alembic environment of the notification service."""

from alembic import context

from services.notification.tables import metadata
from shared.db.migrate import run_env

run_env(context, metadata)
