"""The notification service's repository and transaction, in memory."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from services.notification import publishers
from services.notification.domain import Notification, ObservedEvent
from services.notification.unit_of_work import NotificationTransaction
from shared.domain import DomainEvent
from shared.uow import WireEvent
from tests.unit.fakes import FakeStore, FakeTransaction, FakeUnitOfWork


class FakeObservedEventRepository:
    def __init__(self, store: FakeStore[uuid.UUID, ObservedEvent]) -> None:
        self.store = store
        self.delivered: list[Notification] = []

    async def add(self, event: ObservedEvent) -> bool:
        if self.store.read(event.event_id) is not None:
            return False
        self.store.stage(event.event_id, event)
        return True

    async def deliver(self, event: ObservedEvent, notifications: list[Notification]) -> int:
        self.delivered.extend(notifications)
        return len(notifications)


@dataclass
class FakeNotification:
    """A fake unit of work, the observed events it committed, the domain events it collected
    (whether or not they reach the wire) and every transaction it opened."""

    uow: FakeUnitOfWork[Any]
    observed: FakeStore[uuid.UUID, ObservedEvent]
    events: list[DomainEvent] = field(default_factory=list)
    transactions: list[NotificationTransaction] = field(default_factory=list)


def fake_unit_of_work() -> FakeNotification:
    """A fake unit of work over one in-memory store of observed events."""
    store: FakeStore[uuid.UUID, ObservedEvent] = FakeStore()
    opened: list[NotificationTransaction] = []
    collected: list[DomainEvent] = []

    def to_wire(event: DomainEvent) -> WireEvent | None:
        collected.append(event)
        return publishers.to_wire(event)

    class Tx(FakeTransaction, NotificationTransaction):
        def __init__(self, **context: Any) -> None:
            super().__init__(**context)
            self.observed = FakeObservedEventRepository(store)
            self.stores = (store,)
            opened.append(self)

    return FakeNotification(FakeUnitOfWork(Tx, to_wire), store, collected, opened)
