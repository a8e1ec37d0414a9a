"""One database transaction that a cancellation cannot leave half-open in the pool.

aiormq cancels every in-flight consumer task when the broker connection closes, so a
cancellation can land on any await: waiting for a connection, BEGIN, a statement, COMMIT.
Everything here goes through SQLAlchemy's public `AsyncConnection` API (statements as
`exec_driver_sql`, which skips compiling but keeps SQLAlchemy's error handling: a statement or
COMMIT that is cancelled or loses its server invalidates the connection). On top of that, any
exit that is not an ordinary exception, or a rollback that fails, discards the connection:
a connection whose transaction state is unknown never goes back to the pool.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine


@asynccontextmanager
async def transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """Commit when the body returns; roll back (or discard the connection) when it does not."""
    conn = await engine.connect()
    try:
        await conn.begin()
        yield conn
        await conn.commit()
    except BaseException as exc:
        await _abandon(conn, exc)
        raise
    finally:
        await conn.close()


async def _abandon(conn: AsyncConnection, exc: BaseException) -> None:
    """Roll back after an ordinary error; discard the connection after anything else."""
    if conn.invalidated or conn.closed:
        return  # SQLAlchemy already discarded it (a cancelled or disconnected statement)
    if isinstance(exc, Exception):
        try:
            await conn.rollback()
            return
        except Exception:  # nosec B110 # its state is unknown: it is invalidated below, not pooled
            pass
    # A cancellation (or exit) may have interrupted the driver between sending and reading;
    # only closing the session guarantees the server rolls back whatever it began.
    await conn.invalidate()
