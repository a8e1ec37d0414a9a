"""Create a service's database if missing and bring it to the newest Alembic revision."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData, pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

SERVICES_DIR = Path(__file__).resolve().parents[2] / "services"


async def ensure_database(pg_url: str, name: str) -> bool:
    """CREATE DATABASE `name` unless it exists; True when it was created."""
    conn = await asyncpg.connect(f"{pg_url.rstrip('/')}/postgres")
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return False
        await conn.execute(f'CREATE DATABASE "{name}"')
        return True
    finally:
        await conn.close()


async def drop_database(pg_url: str, name: str) -> None:
    """Drop `name`, closing whatever is still connected to it (tests clean up with this)."""
    conn = await asyncpg.connect(f"{pg_url.rstrip('/')}/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def alembic_config(service: str, database_url: str, role: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(SERVICES_DIR / service / "migrations"))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    cfg.attributes["database_url"] = database_url
    cfg.attributes["role"] = role
    return cfg


def upgrade(service: str, database_url: str, revision: str = "head", *,
            role: str | None = None) -> None:
    """Alembic upgrade of one service's database (blocking; call from a thread in async code).

    With `role`, the migrations run as that role (`SET ROLE` on the connection): what they
    create is the role's, and they have its rights only, not those of the login.
    """
    command.upgrade(alembic_config(service, database_url, role), revision)


def downgrade(service: str, database_url: str, revision: str = "base", *,
              role: str | None = None) -> None:
    command.downgrade(alembic_config(service, database_url, role), revision)


def run_env(context: object, target_metadata: MetaData) -> None:
    """Body of every service's migrations/env.py: online, async, one transaction per run."""
    config = context.config  # type: ignore[attr-defined]
    url = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")
    role = config.attributes.get("role")

    def do_run(connection: Connection) -> None:
        context.configure(  # type: ignore[attr-defined]
            connection=connection, target_metadata=target_metadata, transaction_per_migration=True
        )
        with context.begin_transaction():  # type: ignore[attr-defined]
            context.run_migrations()  # type: ignore[attr-defined]

    async def run_async() -> None:
        settings = {"role": role} if role else {}
        engine = create_async_engine(url, poolclass=pool.NullPool,
                                     connect_args={"server_settings": settings})
        async with engine.connect() as connection:
            await connection.run_sync(do_run)
            await connection.commit()
        await engine.dispose()

    asyncio.run(run_async())

