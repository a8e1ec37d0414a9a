"""Async engine with the settings the message hot path needs."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import MetaData, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

log = logging.getLogger("spine.db")

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def new_metadata() -> MetaData:
    """MetaData with the project's constraint naming convention."""
    return MetaData(naming_convention=NAMING_CONVENTION)


STATEMENT_TIMEOUT_S = 10.0


def make_engine(url: str, *, pool_size: int = 16, service: str = "spine") -> AsyncEngine:
    """An engine whose connections are ready for the hot path (statement cache, no JIT)."""
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        # No overflow: with up to `prefetch` messages in flight, overflow connections were opened
        # and closed per message (connect, TLS probe, type introspection) — a sixth of the CPU.
        # Handlers beyond the pool wait for a connection instead, which costs nothing.
        max_overflow=0,
        pool_timeout=60,
        pool_pre_ping=False,
        connect_args={
            "server_settings": {"application_name": f"spine-{service}", "jit": "off"},
            # A statement that gets no answer (a half-dead connection, a stuck server) fails
            # after this long instead of hanging its unit of work forever; the connection is
            # then discarded and the message held until a fresh one answers.
            "command_timeout": STATEMENT_TIMEOUT_S,
        },
    )
    event.listen(engine.sync_engine, "checkout", _refuse_a_session_inside_a_transaction)
    return engine


def _refuse_a_session_inside_a_transaction(dbapi_connection: Any, *_: Any) -> None:
    """A backstop: a pooled session the server reports inside a transaction is never reused.

    Work done on it would join that transaction and be lost when it ends; the pool replaces it
    with a fresh connection instead (`DisconnectionError` makes it retry).
    """
    if dbapi_connection.driver_connection.is_in_transaction():
        log.error("discarding a pooled database session found inside a transaction")
        raise DisconnectionError("pooled session was inside a transaction")


def asyncpg_dsn(sqlalchemy_url: str) -> str:
    """The plain libpq-style DSN asyncpg wants, from a SQLAlchemy URL."""
    return sqlalchemy_url.replace("postgresql+asyncpg://", "postgresql://", 1)
