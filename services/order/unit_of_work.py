"""The order service's unit of work: its transaction holds the order, replica and key stores."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.order import publishers, views
from services.order.repository import (
    IdempotencyStore,
    OrderRepository,
    ReplicaRepository,
    SqlAlchemyIdempotencyStore,
    SqlAlchemyOrderRepository,
    SqlAlchemyReplicaRepository,
)
from services.order.tables import metadata
from shared.uow import ConnTransaction, SqlAlchemyUnitOfWork, Transaction, UnitOfWork

NAME = "order"


class OrderTransaction(Transaction):
    """What an order handler works with: `tx.orders`, `tx.replicas`, `tx.idempotency`."""

    orders: OrderRepository
    replicas: ReplicaRepository
    idempotency: IdempotencyStore


class SqlOrderTransaction(ConnTransaction, OrderTransaction):
    def __init__(self, conn: AsyncConnection, **context: Any) -> None:
        super().__init__(conn, **context)
        self.orders = SqlAlchemyOrderRepository(conn, self.track)
        self.replicas = SqlAlchemyReplicaRepository(conn)
        self.idempotency = SqlAlchemyIdempotencyStore(
            conn, status=views.CREATED, encode=views.order_view, decode=views.order_from_view
        )


OrderUnitOfWork = UnitOfWork[OrderTransaction]


def sql_unit_of_work(engine: AsyncEngine) -> SqlAlchemyUnitOfWork[SqlOrderTransaction]:
    """Units of work on the order database, writing `publishers.to_wire` events."""
    return SqlAlchemyUnitOfWork(engine, NAME, metadata, transaction=SqlOrderTransaction,
                                to_wire=publishers.to_wire)
