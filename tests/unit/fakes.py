"""In-memory stand-ins for the unit of work, so handlers are tested without a database.

`FakeUnitOfWork` behaves like `SqlAlchemyUnitOfWork` where a handler can tell: the inbox refuses
a message it has seen, nothing of a failed unit of work remains, and at commit the events of
the aggregates the repositories handed out become audit facts and wire events (through the
service's real `to_wire`), which a test reads from `audit` and `published`.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

from shared.contracts.envelope import ActorLike
from shared.domain import Aggregate, AuditFact
from shared.uow import Duplicate, ToWire, Transaction, UnitOfWork, WireEvent

K = TypeVar("K")
V = TypeVar("V")


class FakeStore(Generic[K, V]):
    """Committed rows by key; a unit of work stages its writes and applies them at commit."""

    def __init__(self) -> None:
        self.rows: dict[K, V] = {}
        self._staged: dict[K, V] = {}

    def read(self, key: K) -> V | None:
        """A copy, as a database read would be: changing it changes nothing stored."""
        found = self._staged.get(key, self.rows.get(key))
        return copy.deepcopy(found)

    def values(self) -> list[V]:
        return [copy.deepcopy(v) for v in {**self.rows, **self._staged}.values()]

    def stage(self, key: K, value: V) -> None:
        stored = copy.deepcopy(value)
        if isinstance(stored, Aggregate):
            stored.pull_events()  # what is stored is state; its events went to the outbox
        self._staged[key] = stored

    def commit(self) -> None:
        self.rows.update(self._staged)
        self._staged.clear()

    def rollback(self) -> None:
        self._staged.clear()


class FakeTransaction(Transaction):
    """A service's fake transaction lists its stores here, to commit or roll them back together."""

    stores: tuple[FakeStore[Any, Any], ...] = ()


TX = TypeVar("TX", bound=FakeTransaction)


class FakeUnitOfWork(UnitOfWork[TX]):
    def __init__(self, transaction: Callable[..., TX], to_wire: ToWire) -> None:
        self._transaction = transaction
        self._to_wire = to_wire
        self.inbox: set[tuple[str, str]] = set()
        self.audit: list[tuple[ActorLike, AuditFact]] = []
        self.published: list[tuple[ActorLike, uuid.UUID, WireEvent]] = []
        # (reply_to queue, event type) of every event also sent to a sender's reply queue.
        self.replies: list[tuple[str, str]] = []
        self.commits = 0

    @asynccontextmanager
    async def begin(
        self,
        *,
        actor: ActorLike,
        correlation_id: uuid.UUID | None = None,
        causation_id: uuid.UUID | None = None,
        inbox: tuple[str, str] | None = None,
        reply_to: str | None = None,
    ) -> AsyncIterator[TX]:
        if inbox is not None and inbox in self.inbox:
            raise Duplicate("{} already handled message {}".format(*inbox))
        tx = self._transaction(actor=actor, correlation_id=correlation_id or uuid.uuid4(),
                               causation_id=causation_id)
        try:
            yield tx
        except BaseException:
            for store in tx.stores:
                store.rollback()
            raise
        for event in tx.pull_events():
            who = event.actor or tx.actor
            fact = event.audit()
            if fact is not None:
                self.audit.append((who, fact))
            wire = self._to_wire(event)
            if wire is not None:
                self.published.append((who, tx.correlation_id, wire))
                if reply_to:
                    self.replies.append((reply_to, wire.type))
        for store in tx.stores:
            store.commit()
        if inbox is not None:
            self.inbox.add(inbox)
        self.commits += 1

    def published_types(self) -> list[str]:
        return [wire.type for _, _, wire in self.published]
