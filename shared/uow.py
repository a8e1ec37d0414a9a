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
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared.contracts.envelope import Actor, new_envelope


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


class UnitOfWork:
    """Opens transactions against one service's database; see `Transaction`."""

    def __init__(self, engine: AsyncEngine, producer: str, metadata: sa.MetaData) -> None:
        self.engine = engine
        self.producer = producer
        self._outbox = metadata.tables["outbox"]
        self._audit = metadata.tables["audit_log"]
        self._inbox = metadata.tables["inbox"]

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
        async with self.engine.begin() as conn:
            if inbox is not None:
                seen = await conn.execute(
                    pg_insert(self._inbox)
                    .values(consumer=inbox[0], message_id=inbox[1])
                    .on_conflict_do_nothing()
                    .returning(sa.literal(1))
                )
                if seen.first() is None:
                    raise Duplicate(f"{inbox[0]} already handled message {inbox[1]}")
            tx = Transaction(
                conn=conn,
                producer=self.producer,
                actor=actor,
                correlation_id=correlation_id or uuid.uuid4(),
                causation_id=causation_id,
            )
            yield tx
            if tx._audit:
                await conn.execute(sa.insert(self._audit), tx._audit)
            if tx._outbox:
                await conn.execute(sa.insert(self._outbox), tx._outbox)
