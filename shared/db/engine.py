"""Async engine with the settings the message hot path needs."""

from __future__ import annotations

from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

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


def make_engine(url: str, *, pool_size: int = 16, service: str = "spine") -> AsyncEngine:
    """An engine whose connections are ready for the hot path (statement cache, no JIT)."""
    return create_async_engine(
        url,
        pool_size=pool_size,
        # No overflow: with up to `prefetch` messages in flight, overflow connections were opened
        # and closed per message (connect, TLS probe, type introspection) — a sixth of the CPU.
        # Handlers beyond the pool wait for a connection instead, which costs nothing.
        max_overflow=0,
        pool_timeout=60,
        pool_pre_ping=False,
        connect_args={"server_settings": {"application_name": f"spine-{service}", "jit": "off"}},
    )


def asyncpg_dsn(sqlalchemy_url: str) -> str:
    """The plain libpq-style DSN asyncpg wants, from a SQLAlchemy URL."""
    return sqlalchemy_url.replace("postgresql+asyncpg://", "postgresql://", 1)
