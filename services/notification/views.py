"""Reads of the notification service (the observed events): no unit of work, no lock."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.notification.domain import SYSTEM_ACTOR
from services.notification.tables import (
    audit_log,
    notification_delivery,
    observed_event,
    outbox,
    person,
)
from shared.audit import trace_id_at


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


async def order_timeline(engine: AsyncEngine, order_id: str, *, limit: int,
                         offset: int) -> list[dict[str, Any]]:
    """The notification service's part of an order's timeline: whom its events told, and how.

    The deliveries of every observed event whose data names the order (order and dispatch
    events all carry `order_id`): one entry when each was created (by this service, as the
    event was recorded), then its audit rows (delivered, failed, retried). Each entry's details
    say recipient, channel, current status, attempts, rule and the causing event.
    """
    ours = (sa.select(_d, observed_event.c.correlation_id)
            .join(observed_event, observed_event.c.event_id == _d.c.event_id)
            # No index on data->>'order_id': the deliveries drive the join, not the events.
            .where(observed_event.c.data["order_id"].astext == order_id)
            .cte("ours"))
    about = sa.func.jsonb_build_object(
        "recipient", ours.c.recipient, "channel", ours.c.channel, "status", ours.c.status,
        "attempts", ours.c.attempts, "rule_id", ours.c.rule_id, "event_type", ours.c.event_type,
        "event_id", ours.c.event_id, "title", ours.c.title, "last_error", ours.c.last_error)
    # An inbox entry is sent the moment it is created (the same now()); the others wait.
    created_as = sa.case((ours.c.sent_at == ours.c.created_at, "sent"), else_="pending")
    created = sa.select(
        ours.c.created_at.label("occurred_at"), sa.literal(SYSTEM_ACTOR.id).label("actor_id"),
        sa.literal(SYSTEM_ACTOR.role).label("actor_role"),
        sa.literal("notification.created").label("action"),
        sa.literal("delivery").label("entity_type"),
        sa.cast(ours.c.id, sa.Text).label("entity_id"),
        sa.null().label("from_state"), created_as.label("to_state"), sa.null().label("reason"),
        ours.c.correlation_id,
        trace_id_at(outbox, ours.c.correlation_id, ours.c.created_at).label("trace_id"),
        about.label("details"), sa.literal(0).label("seq"), sa.literal(0).label("audit_id"))
    a = audit_log.c
    changed = sa.select(
        a.occurred_at, a.actor_id, a.actor_role, a.action, a.entity_type, a.entity_id,
        a.from_state, a.to_state, a.reason, a.correlation_id,
        trace_id_at(outbox, a.correlation_id, a.occurred_at).label("trace_id"),
        # The row's own facts (attempts then) win over the delivery's current ones.
        about.op("||")(a.details).label("details"), sa.literal(1).label("seq"),
        a.id.label("audit_id"),
    ).join(ours, (a.entity_type == "delivery") & (a.entity_id == sa.cast(ours.c.id, sa.Text)))
    both = sa.union_all(created, changed).subquery()
    query = (sa.select(*(c for c in both.c if c.name not in ("seq", "audit_id")))
             .order_by(both.c.occurred_at, both.c.seq, both.c.audit_id, both.c.entity_id)
             .limit(limit).offset(offset))
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).mappings()
        return [{**r, "service": "notification"} for r in rows]
