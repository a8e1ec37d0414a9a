"""Persistence of observed events (SQLAlchemy Core)."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.notification.domain import ObservedEvent
from services.notification.tables import observed_event

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
        """Store the event; False when it was stored before (same event id, another route)."""
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


async def list_events(
    conn: AsyncConnection,
    *,
    correlation_id: uuid.UUID | None,
    event_type: str | None,
    aggregate_id: str | None,
    oldest_first: bool,
    limit: int,
) -> list[dict[str, Any]]:
    query = sa.select(observed_event)
    if correlation_id:
        query = query.where(observed_event.c.correlation_id == correlation_id)
    if event_type:
        query = query.where(observed_event.c.type == event_type)
    if aggregate_id:
        query = query.where(observed_event.c.aggregate_id == aggregate_id)
    order = (observed_event.c.occurred_at, observed_event.c.received_at)
    query = query.order_by(*(c.asc() if oldest_first else c.desc() for c in order))
    rows = await conn.execute(query.limit(limit))
    return [dict(r) for r in rows.mappings()]
