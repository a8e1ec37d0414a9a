"""Persistence of observed events, deliveries and people (SQLAlchemy Core: the hot path)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.notification.domain import (
    FAILED,
    PENDING,
    SENT,
    Claimed,
    Notification,
    ObservedEvent,
    Person,
)
from services.notification.tables import notification_delivery, observed_event, person


class ObservedEventRepository(Protocol):
    """What handlers need of observation storage (the SQL one below; a dict in unit tests)."""

    async def add(self, event: ObservedEvent) -> bool:
        """Store the event; False when it was stored before (same event id, another route)."""
        ...

    async def deliver(self, event: ObservedEvent, notifications: list[Notification]) -> int:
        """Record what the rules said: inbox entries sent, outbound ones pending; how many."""
        ...


class DeliveryRepository(Protocol):
    """The sender's and ops' view of deliveries."""

    async def claim(self, channel: str, limit: int, lease_s: float) -> list[Claimed]:
        """Due pending deliveries of `channel`, each taken for one attempt for `lease_s`."""
        ...

    async def sent(self, delivery_id: uuid.UUID) -> bool:
        """Record it sent; False if it was no longer pending (another attempt recorded it)."""
        ...

    async def attempt_failed(self, delivery_id: uuid.UUID, error: str,
                             retry_in_s: float | None) -> bool:
        """Schedule the next attempt, or (None) record it failed; False if not pending."""
        ...

    async def retry(self, delivery_id: uuid.UUID) -> dict[str, Any] | None:
        """Its row as it was (None if there is none); a failed one becomes pending, due now."""
        ...


class PeopleRepository(Protocol):
    async def get_many(self, ids: Sequence[str]) -> dict[str, Person]:
        ...

    async def upsert(self, people: Sequence[Person]) -> None:
        ...


# Built once: constructing the statement per message cost more than executing it.
_INSERT_OBSERVED = (
    pg_insert(observed_event)
    .on_conflict_do_nothing(index_elements=["event_id"])
    .returning(observed_event.c.event_id)
)

# One round trip for every delivery of an event, however many people a role names: the inbox
# keeps one entry per address (a role's entry is every holder's), the outbound channels reach
# each person the directory lists for the address and who has an address for the channel. A
# person without one is not told on that channel (the inbox still holds the entry).
_INSERT_DELIVERIES = """
WITH n AS (
    SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])
        AS n(rule_id, address, channel, title, body, html)
), target AS (
    SELECT n.*, n.address AS recipient FROM n WHERE n.channel = 'inbox'
    UNION ALL
    SELECT n.*, CASE WHEN n.address LIKE 'role:%' THEN 'user:' || p.id ELSE n.address END
    FROM n JOIN person p
      ON (n.address LIKE 'role:%' AND substr(n.address, 6) = ANY (p.roles))
      OR p.id = split_part(n.address, ':', 2) AND n.address NOT LIKE 'role:%'
    WHERE (n.channel = 'email' AND p.email IS NOT NULL)
       OR (n.channel = 'webhook' AND p.webhook_url IS NOT NULL)
)
INSERT INTO notification_delivery (id, event_id, event_type, rule_id, recipient, channel,
                                   status, attempts, title, body, html, sent_at,
                                   next_attempt_at)
SELECT gen_random_uuid(), $1, $8, rule_id, recipient, channel,
       CASE WHEN channel = 'inbox' THEN 'sent' ELSE 'pending' END,
       CASE WHEN channel = 'inbox' THEN 1 ELSE 0 END, title, body, html,
       CASE WHEN channel = 'inbox' THEN now() END,
       CASE WHEN channel = 'inbox' THEN NULL ELSE now() END
FROM target
ON CONFLICT (event_id, recipient, channel) DO NOTHING
RETURNING 1
"""


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
        columns = (
            [n.rule_id for n in notifications], [n.recipient for n in notifications],
            [n.channel for n in notifications], [n.message.title for n in notifications],
            [n.message.text for n in notifications],
            # The inbox shows title and text; the HTML part is for mail only.
            [n.message.html if n.channel == "email" else None for n in notifications],
        )
        result = await self.conn.exec_driver_sql(_INSERT_DELIVERIES,
                                                 (event.event_id, *columns, event.type))
        return len(result.all())


_d = notification_delivery

_CLAIM = """
WITH due AS (
    SELECT id FROM notification_delivery
    WHERE status = 'pending' AND channel = $1 AND next_attempt_at <= now()
    ORDER BY next_attempt_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE notification_delivery d
    SET attempts = d.attempts + 1, next_attempt_at = now() + make_interval(secs => $3)
    FROM due WHERE d.id = due.id
    RETURNING d.id, d.event_id, d.event_type, d.rule_id, d.recipient, d.channel, d.attempts,
              d.title, d.body, d.html
)
SELECT c.*, e.correlation_id, p.email, p.webhook_url, p.webhook_secret
FROM claimed c
JOIN observed_event e ON e.event_id = c.event_id
LEFT JOIN person p ON c.recipient NOT LIKE 'role:%' AND p.id = split_part(c.recipient, ':', 2)
"""


class SqlAlchemyDeliveryRepository:
    """Deliveries on the unit of work's connection."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def claim(self, channel: str, limit: int, lease_s: float) -> list[Claimed]:
        # The lease (next_attempt_at pushed ahead, the attempt counted) is committed before
        # anything is sent: no transaction or row lock is held across the network call, and an
        # attempt cut short by a crash is taken again once the lease runs out.
        rows = (await self.conn.exec_driver_sql(_CLAIM, (channel, limit, lease_s))).mappings()
        return [Claimed(**dict(row)) for row in rows]

    async def sent(self, delivery_id: uuid.UUID) -> bool:
        result = await self.conn.execute(
            sa.update(_d).where(_d.c.id == delivery_id, _d.c.status == PENDING)
            .values(status=SENT, sent_at=sa.func.now(), next_attempt_at=None, last_error=None)
            .returning(_d.c.id))
        return result.first() is not None

    async def attempt_failed(self, delivery_id: uuid.UUID, error: str,
                             retry_in_s: float | None) -> bool:
        values: dict[str, Any] = {"last_error": error[:2000]}
        if retry_in_s is None:
            values.update(status=FAILED, next_attempt_at=None)
        else:
            values["next_attempt_at"] = sa.func.now() + sa.func.make_interval(
                0, 0, 0, 0, 0, 0, retry_in_s)
        result = await self.conn.execute(
            sa.update(_d).where(_d.c.id == delivery_id, _d.c.status == PENDING)
            .values(**values).returning(_d.c.id))
        return result.first() is not None

    async def retry(self, delivery_id: uuid.UUID) -> dict[str, Any] | None:
        before = (await self.conn.execute(
            sa.select(_d).where(_d.c.id == delivery_id).with_for_update())).mappings().first()
        if before is None:
            return None
        if before["status"] == FAILED:
            await self.conn.execute(
                sa.update(_d).where(_d.c.id == delivery_id)
                .values(status=PENDING, attempts=0, next_attempt_at=sa.func.now()))
        return dict(before)


class SqlAlchemyPeopleRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def get_many(self, ids: Sequence[str]) -> dict[str, Person]:
        if not ids:
            return {}
        rows = await self.conn.execute(
            sa.select(person).where(person.c.id.in_(list(ids))).with_for_update())
        return {r.id: Person(r.id, r.name, tuple(r.roles), r.email, r.webhook_url,
                             r.webhook_secret) for r in rows}

    async def upsert(self, people: Sequence[Person]) -> None:
        if not people:
            return
        statement = pg_insert(person).values([
            {"id": p.id, "name": p.name, "roles": list(p.roles), "email": p.email,
             "webhook_url": p.webhook_url, "webhook_secret": p.webhook_secret}
            for p in people])
        await self.conn.execute(statement.on_conflict_do_update(
            index_elements=["id"],
            set_={c: statement.excluded[c] for c in
                  ("name", "roles", "email", "webhook_url", "webhook_secret")}
            | {"updated_at": sa.func.now()}))
