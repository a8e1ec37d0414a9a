"""Reading the append-only audit log, the same way in every service (writing is in `uow`)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

_HISTORY = text(
    "SELECT id, occurred_at, actor_id, actor_role, action, from_state, to_state, reason, "
    "correlation_id, causation_id, details FROM audit_log "
    "WHERE entity_type = :entity_type AND entity_id = :entity_id ORDER BY id"
)


class AuditEntry(BaseModel):
    """One row of an entity's history: who did what, when, from which state to which, and why."""

    id: int
    occurred_at: datetime
    actor_id: str
    actor_role: str
    action: str
    from_state: str | None
    to_state: str | None
    reason: str | None
    correlation_id: uuid.UUID | None
    causation_id: uuid.UUID | None
    details: dict[str, Any]


async def history(conn: AsyncConnection, entity_type: str, entity_id: str) -> list[dict[str, Any]]:
    """Every audit row about one entity, oldest first."""
    rows = await conn.execute(_HISTORY, {"entity_type": entity_type, "entity_id": entity_id})
    return [dict(r) for r in rows.mappings()]


# ---------------------------------------------------------------------------- an order's timeline


class TimelineEntry(BaseModel):
    """One thing a service recorded about an order, in the shape every service's timeline shares."""

    occurred_at: datetime
    service: str
    actor_id: str
    actor_role: str
    action: str
    entity_type: str
    entity_id: str
    from_state: str | None
    to_state: str | None
    reason: str | None
    correlation_id: uuid.UUID | None
    trace_id: str | None = Field(
        description="the W3C trace id of the unit of work that wrote the entry, from the "
                    "`traceparent` its outbox rows carried; null when it published nothing "
                    "(no trace id is kept for it)")
    details: dict[str, Any]


class TimelineOut(BaseModel):
    """A service's part of one order's timeline, oldest first."""

    order_id: str
    service: str
    entries: list[TimelineEntry]


def trace_id_at(outbox: sa.Table, correlation_id: sa.ColumnElement[Any],
                at: sa.ColumnElement[Any]) -> sa.ScalarSelect[Any]:
    """The trace id of the unit of work with `correlation_id` that began at `at`, or null.

    Audit rows keep no trace id, but the outbox rows a unit of work writes carry its
    `traceparent` (`shared.uow`), with its correlation id and the same `now()` (the
    transaction's start) as every row it stamps. A unit of work that published nothing has no
    trace id on record, and the answer is null rather than a guess. The outbox has no index on
    correlation_id, so this scans it per entry: bounded by the timeline's limit, but an index
    is the cure if outboxes grow large.
    """
    traceparent = outbox.c.headers["traceparent"].astext
    return (sa.select(sa.func.split_part(traceparent, "-", 2))
            .where(outbox.c.correlation_id == correlation_id, outbox.c.created_at == at,
                   traceparent.is_not(None))
            .order_by(outbox.c.id).limit(1).scalar_subquery())


def timeline_columns(audit_log: sa.Table, outbox: sa.Table, service: str) -> list[Any]:
    """The columns of a `TimelineEntry`, from an audit row and its unit of work's outbox."""
    a = audit_log.c
    return [a.occurred_at, sa.literal(service).label("service"), a.actor_id, a.actor_role,
            a.action, a.entity_type, a.entity_id, a.from_state, a.to_state, a.reason,
            a.correlation_id, trace_id_at(outbox, a.correlation_id, a.occurred_at).label("trace_id"),
            a.details]


async def timeline(conn: AsyncConnection, audit_log: sa.Table, outbox: sa.Table,
                   about: sa.ColumnElement[bool], *, service: str, limit: int,
                   offset: int) -> list[dict[str, Any]]:
    """The audit rows `about` selects, oldest first, as timeline entries."""
    query = (sa.select(*timeline_columns(audit_log, outbox, service)).where(about)
             .order_by(audit_log.c.occurred_at, audit_log.c.id).limit(limit).offset(offset))
    return [dict(r) for r in (await conn.execute(query)).mappings()]
