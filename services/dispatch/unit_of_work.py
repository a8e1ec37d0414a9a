"""The dispatch service's unit of work: its transaction holds the dispatch repository."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.dispatch import publishers
from services.dispatch.repository import DispatchRepository, SqlAlchemyDispatchRepository
from services.dispatch.tables import metadata
from shared.uow import ConnTransaction, SqlAlchemyUnitOfWork, Transaction, UnitOfWork

NAME = "dispatch"


class DispatchTransaction(Transaction):
    """What a dispatch handler works with: `tx.dispatches`."""

    dispatches: DispatchRepository


class SqlDispatchTransaction(ConnTransaction, DispatchTransaction):
    def __init__(self, conn: AsyncConnection, **context: Any) -> None:
        super().__init__(conn, **context)
        self.dispatches = SqlAlchemyDispatchRepository(conn, self.track)


DispatchUnitOfWork = UnitOfWork[DispatchTransaction]


def sql_unit_of_work(engine: AsyncEngine) -> SqlAlchemyUnitOfWork[SqlDispatchTransaction]:
    """Units of work on the dispatch database, writing `publishers.to_wire` events."""
    return SqlAlchemyUnitOfWork(engine, NAME, metadata, transaction=SqlDispatchTransaction,
                                to_wire=publishers.to_wire)
