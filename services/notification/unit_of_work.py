"""The notification service's unit of work: its transaction holds the observed-event repository."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.notification import publishers
from services.notification.repository import (
    DeliveryRepository,
    ObservedEventRepository,
    PeopleRepository,
    SqlAlchemyDeliveryRepository,
    SqlAlchemyObservedEventRepository,
    SqlAlchemyPeopleRepository,
)
from services.notification.tables import metadata
from shared.uow import ConnTransaction, SqlAlchemyUnitOfWork, Transaction, UnitOfWork

NAME = "notification"


class NotificationTransaction(Transaction):
    """What a notification handler works with: `tx.observed`, `tx.deliveries`, `tx.people`."""

    observed: ObservedEventRepository
    deliveries: DeliveryRepository
    people: PeopleRepository


class SqlNotificationTransaction(ConnTransaction, NotificationTransaction):
    def __init__(self, conn: AsyncConnection, **context: Any) -> None:
        super().__init__(conn, **context)
        self.observed = SqlAlchemyObservedEventRepository(conn)
        self.deliveries = SqlAlchemyDeliveryRepository(conn)
        self.people = SqlAlchemyPeopleRepository(conn)


NotificationUnitOfWork = UnitOfWork[NotificationTransaction]


def sql_unit_of_work(engine: AsyncEngine) -> SqlAlchemyUnitOfWork[SqlNotificationTransaction]:
    """Units of work on the notification database, writing `publishers.to_wire` events."""
    return SqlAlchemyUnitOfWork(engine, NAME, metadata, transaction=SqlNotificationTransaction,
                                to_wire=publishers.to_wire)
