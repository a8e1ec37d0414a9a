"""The unit of work: one transaction holding the effect, its audit rows, its outbox rows and its inbox row."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from opentelemetry import propagate
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared.contracts.envelope import Actor, new_envelope
from shared.db.transaction import transaction


class Duplicate(Exception):
    """The message was already handled by this consumer; its effect exists once already."""


@dataclass
class Transaction:
    """What a handler writes through: the connection, plus audit and outbox collectors."""

    conn: AsyncConnection
    producer: str
    actor: Actor
    correlation_id: uuid.UUID
    causation_id: uuid.UUID | None
    _audit: list[dict[str, Any]] = field(default_factory=list)
    _outbox: list[dict[str, Any]] = field(default_factory=list)

    def record(
        self,
        *,
        action: str,
        entity_type: str,
        entity_id: str,
        from_state: str | None = None,
        to_state: str | None = None,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
        actor: Actor | None = None,
    ) -> None:
        """Append an audit row; it commits with the change it describes."""
        who = actor or self.actor
        self._audit.append(
            {
                "actor_id": who.id,
                "actor_role": who.role,
                "action": action,
                "entity_type": entity_type,
                "entity_id": entity_id,
                "from_state": from_state,
                "to_state": to_state,
                "reason": reason,
                "correlation_id": self.correlation_id,
                "causation_id": self.causation_id,
                "details": details or {},
            }
        )

    def emit(self, event_type: str, data: dict[str, Any], *, actor: Actor | None = None) -> uuid.UUID:
        """Queue an event in the outbox; the relay publishes it after commit."""
        event_id = uuid.uuid4()
        envelope = new_envelope(
            type=event_type,
            producer=self.producer,
            data=data,
            actor=actor or self.actor,
            correlation_id=self.correlation_id,
            causation_id=self.causation_id,
            event_id=event_id,
        )
        headers: dict[str, str] = {}
        propagate.inject(headers)  # the relay continues this trace when it publishes
        self._outbox.append(
            {
                "event_id": event_id,
                "routing_key": event_type,
                "correlation_id": self.correlation_id,
                "body": json.dumps(envelope, separators=(",", ":"), default=str),
                "headers": headers,
            }
        )
        return event_id


# The plumbing rows are plain SQL sent with `exec_driver_sql`: they are the per-message hot path,
# and SQL that needs no compiling (prepared once per connection by the driver) costs a fraction
# of building SQLAlchemy constructs for every message — while still running through
# SQLAlchemy's connection, whose error handling discards a cancelled or disconnected session.
_INBOX = (
    "INSERT INTO inbox (consumer, message_id) VALUES ($1, $2) "
    "ON CONFLICT DO NOTHING RETURNING 1"
)
# Audit rows and outbox rows in one round trip; a statement-level trigger NOTIFYs the relay.
_AUDIT_AND_OUTBOX = """
WITH audit AS (
    INSERT INTO audit_log (actor_id, actor_role, action, entity_type, entity_id, from_state,
                           to_state, reason, correlation_id, causation_id, details)
    SELECT a, r, act, et, eid, fs, ts, rs, c, cz, d::jsonb
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::text[], $8::text[], $9::uuid[], $10::uuid[], $11::text[])
         AS t(a, r, act, et, eid, fs, ts, rs, c, cz, d)
)
INSERT INTO outbox (event_id, routing_key, correlation_id, body, headers)
SELECT e, k, c, b, h::jsonb
FROM unnest($12::uuid[], $13::text[], $14::uuid[], $15::text[], $16::text[]) AS t(e, k, c, b, h)
"""
_AUDIT_COLUMNS = ("actor_id", "actor_role", "action", "entity_type", "entity_id", "from_state",
                  "to_state", "reason", "correlation_id", "causation_id")


class UnitOfWork:
    """Opens transactions against one service's database; see `Transaction`."""

    def __init__(self, engine: AsyncEngine, producer: str, metadata: sa.MetaData) -> None:
        self.engine = engine
        self.producer = producer
        # The plumbing tables must be there; the SQL above names them directly.
        for name in ("outbox", "audit_log", "inbox"):
            metadata.tables[name]  # noqa: B018

    @asynccontextmanager
    async def begin(
        self,
        *,
        actor: Actor,
        correlation_id: uuid.UUID | None = None,
        causation_id: uuid.UUID | None = None,
        inbox: tuple[str, str] | None = None,
    ) -> AsyncIterator[Transaction]:
        """Run the body in one transaction; raise `Duplicate` if `inbox` (consumer, message_id) was seen."""
        async with transaction(self.engine) as conn:
            if inbox is not None and (await conn.exec_driver_sql(_INBOX, inbox)).first() is None:
                raise Duplicate("{} already handled message {}".format(*inbox))
            tx = Transaction(
                conn=conn,
                producer=self.producer,
                actor=actor,
                correlation_id=correlation_id or uuid.uuid4(),
                causation_id=causation_id,
            )
            yield tx
            if tx._audit or tx._outbox:
                await conn.exec_driver_sql(_AUDIT_AND_OUTBOX, tuple(_columns(tx)))


def _columns(tx: Transaction) -> list[list[Any]]:
    """The audit and outbox rows as the 16 column arrays `_AUDIT_AND_OUTBOX` unnests."""
    audit = [[row[name] for row in tx._audit] for name in _AUDIT_COLUMNS]
    audit.append([json.dumps(row["details"], default=str) for row in tx._audit])
    outbox = [
        [row["event_id"] for row in tx._outbox],
        [row["routing_key"] for row in tx._outbox],
        [row["correlation_id"] for row in tx._outbox],
        [row["body"] for row in tx._outbox],
        [json.dumps(row["headers"]) for row in tx._outbox],
    ]
    return audit + outbox
