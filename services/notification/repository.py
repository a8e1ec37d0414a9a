"""Persistence of observed events (SQLAlchemy Core: the per-message hot path)."""

from __future__ import annotations

import uuid
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.notification.domain import Notification, ObservedEvent
from services.notification.tables import notification_delivery, observed_event


class ObservedEventRepository(Protocol):
    """What handlers need of observation storage (the SQL one below; a dict in unit tests)."""

    async def add(self, event: ObservedEvent) -> bool:
        """Store the event; False when it was stored before (same event id, another route)."""
        ...

    async def deliver(self, event: ObservedEvent, notifications: list[Notification]) -> int:
        """Record what the rules said (the in-app inbox is delivered by its row); how many."""
        ...


# Built once: constructing the statement per message cost more than executing it.
_INSERT_OBSERVED = (
    pg_insert(observed_event)
    .on_conflict_do_nothing(index_elements=["event_id"])
    .returning(observed_event.c.event_id)
)


class SqlAlchemyObservedEventRepository:
    """Writes observations on the unit of work's connection."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def add(self, event: ObservedEvent) -> bool:
        result = await self.conn.execute(
            _INSERT_OBSERVED,
            {
                "event_id": event.event_id,
                "type": event.type,
                "producer": event.producer,
                "occurred_at": event.occurred_at,
                "correlation_id": event.correlation_id,
                "causation_id": event.causation_id,
                "actor_id": event.actor_id,
                "actor_role": event.actor_role,
                "aggregate_type": event.aggregate.type,
                "aggregate_id": event.aggregate.id,
                "aggregate_version": event.aggregate.version,
                "data": dict(event.data),
            },
        )
        return result.first() is not None

    async def deliver(self, event: ObservedEvent, notifications: list[Notification]) -> int:
        if not notifications:
            return 0
        rows = [{"id": uuid.uuid4(), "event_id": n.event_id, "event_type": event.type,
                 "rule_id": n.rule_id, "recipient": n.recipient, "channel": n.channel,
                 # The inbox is its own delivery: the row is the entry the recipient reads.
                 "status": "sent", "attempts": 1, "title": n.title, "body": n.body,
                 "sent_at": sa.func.now()} for n in notifications]
        result = await self.conn.execute(
            pg_insert(notification_delivery).values(rows)
            .on_conflict_do_nothing(index_elements=["event_id", "recipient", "channel"])
            .returning(notification_delivery.c.id))
        return len(result.all())
