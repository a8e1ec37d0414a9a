"""Reads of the notification service (the observed events): no unit of work, no lock."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.notification.tables import notification_delivery, observed_event, person


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


_d = notification_delivery


async def inbox(engine: AsyncEngine, addresses: list[str], *, unread_only: bool, limit: int,
                offset: int) -> dict[str, Any]:
    """The in-app entries for these addresses, newest first, and how many are unread."""
    mine = (_d.c.channel == "inbox") & _d.c.recipient.in_(addresses)
    query = sa.select(_d).where(mine).order_by(_d.c.created_at.desc(), _d.c.id)
    if unread_only:
        query = query.where(_d.c.read_at.is_(None))
    async with engine.connect() as conn:
        rows = await conn.execute(query.limit(limit).offset(offset))
        unread = await conn.scalar(sa.select(sa.func.count()).select_from(_d)
                                   .where(mine, _d.c.read_at.is_(None)))
        return {"unread": unread or 0, "entries": [dict(r) for r in rows.mappings()]}


async def mark_read(engine: AsyncEngine, delivery_id: uuid.UUID,
                    addresses: list[str]) -> dict[str, Any] | None:
    """Mark it read (once: the first time stays) if it is in these addresses' inbox."""
    async with engine.begin() as conn:
        row = (await conn.execute(
            sa.update(_d)
            .where(_d.c.id == delivery_id, _d.c.channel == "inbox", _d.c.recipient.in_(addresses))
            .values(read_at=sa.func.coalesce(_d.c.read_at, sa.func.now()))
            .returning(_d))).mappings().first()
        return dict(row) if row else None


async def deliveries(engine: AsyncEngine, *, event_id: uuid.UUID | None, recipient: str | None,
                     channel: str | None, status: str | None, limit: int,
                     offset: int) -> list[dict[str, Any]]:
    query = sa.select(_d).order_by(_d.c.created_at.desc(), _d.c.id)
    for column, value in ((_d.c.event_id, event_id), (_d.c.recipient, recipient),
                          (_d.c.channel, channel), (_d.c.status, status)):
        if value is not None:
            query = query.where(column == value)
    async with engine.connect() as conn:
        rows = await conn.execute(query.limit(limit).offset(offset))
        return [dict(r) for r in rows.mappings()]


async def delivery(engine: AsyncEngine, delivery_id: uuid.UUID) -> dict[str, Any] | None:
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(_d).where(_d.c.id == delivery_id))).mappings().first()
        return dict(row) if row else None


async def people(engine: AsyncEngine, *, role: str | None, limit: int,
                 offset: int) -> list[dict[str, Any]]:
    """The directory by id, without the secrets (only whether a webhook has one)."""
    p = person
    query = sa.select(p.c.id, p.c.name, p.c.roles, p.c.email, p.c.webhook_url,
                      p.c.webhook_secret.is_not(None).label("has_webhook_secret"),
                      p.c.updated_at).order_by(p.c.id)
    if role is not None:
        query = query.where(sa.literal(role) == sa.any_(p.c.roles))
    async with engine.connect() as conn:
        rows = await conn.execute(query.limit(limit).offset(offset))
        return [dict(r) for r in rows.mappings()]
