"""Persistence of observed events (SQLAlchemy Core: the per-message hot path)."""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.notification.domain import ObservedEvent
from services.notification.tables import observed_event


class ObservedEventRepository(Protocol):
    """What handlers need of observation storage (the SQL one below; a dict in unit tests)."""

    async def add(self, event: ObservedEvent) -> bool:
        """Store the event; False when it was stored before (same event id, another route)."""
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
