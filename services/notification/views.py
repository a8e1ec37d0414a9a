"""Reads of the notification service (the observed events): no unit of work, no lock."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.notification.tables import observed_event


async def list_events(
    engine: AsyncEngine,
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
    async with engine.connect() as conn:
        rows = await conn.execute(query.limit(limit))
        return [dict(r) for r in rows.mappings()]
