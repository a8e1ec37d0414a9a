"""The unit of work: one transaction holding the effect, its audit rows, its outbox rows and its inbox row.

A handler opens one with `uow.begin(...)`, reads and changes aggregates through the
repositories of the `Transaction` it gets (`tx.dispatches`, `tx.orders`), and returns. The unit
of work then collects the domain events of every aggregate the repositories handed out and, in
the same commit, writes one audit row per event and one outbox row per event that has a wire
contract (the service's `publishers.to_wire`). `UnitOfWork` is the abstract base a handler
depends on; `SqlAlchemyUnitOfWork` is the real one and `tests/unit/fakes.py` the fake.
"""

from __future__ import annotations

import json
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from opentelemetry import propagate
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared import crashpoints
from shared.contracts.envelope import ActorLike, new_envelope
from shared.db.transaction import transaction
from shared.domain import Aggregate, AuditFact, DomainEvent


class Duplicate(Exception):
    """The message was already handled by this consumer; its effect exists once already."""


class InboxConflict(Exception):
    """A message id this consumer handled arrives again with a different body: never acted on."""


# SHA-256 of the body of the message being handled, set by the delivery policy for each
# delivery: the inbox keeps it, so that a known id with a different body is told apart from a
# redelivery. None outside a message handler (and for rows written before it was kept).
message_digest: ContextVar[bytes | None] = ContextVar("message_digest", default=None)


@dataclass(frozen=True)
class WireEvent:
    """A domain event as the wire contract says: routing key (= event type) and `data`."""

    type: str
    data: dict[str, Any]


ToWire = Callable[[DomainEvent], WireEvent | None]
A = TypeVar("A", bound=Aggregate)


class Transaction:
    """What one unit of work knows: who acts, the journey it belongs to, what it touched.

    Service transactions subclass it to add their repositories, which `track` every aggregate
    they load or add, so that its events are collected at commit.
    """

    def __init__(self, *, actor: ActorLike, correlation_id: uuid.UUID,
                 causation_id: uuid.UUID | None) -> None:
        self.actor = actor
        self.correlation_id = correlation_id
        self.causation_id = causation_id
        # The AMQP queue the sender asked answers on: every event of this unit of work is also
        # sent there (the `reply_to` of the message being handled).
        self.reply_to: str | None = None
        self._tracked: list[Aggregate] = []
        self._loose: list[DomainEvent] = []

    def track(self, aggregate: A) -> A:
        if aggregate not in self._tracked:
            self._tracked.append(aggregate)
        return aggregate

    def collect(self, event: DomainEvent) -> None:
        """An event no aggregate records: a refusal that creates nothing (`order.rejected`)."""
        self._loose.append(event)

    def pull_events(self) -> list[DomainEvent]:
        """Every event recorded in this unit of work, in order per aggregate."""
        events, self._loose = self._loose, []
        for aggregate in self._tracked:
            events += aggregate.pull_events()
        return events


TX = TypeVar("TX", bound=Transaction)
TX_co = TypeVar("TX_co", bound=Transaction, covariant=True)


class UnitOfWork(ABC, Generic[TX_co]):
    """Opens units of work; what every handler depends on (a fake in unit tests)."""

    @abstractmethod
    def begin(
        self,
        *,
        actor: ActorLike,
        correlation_id: uuid.UUID | None = None,
        causation_id: uuid.UUID | None = None,
        inbox: tuple[str, str] | None = None,
        reply_to: str | None = None,
    ) -> AbstractAsyncContextManager[TX_co]:
        """One transaction; raises `Duplicate` if `inbox` (consumer, message_id) was handled.

        `InboxConflict` if it was handled with another body. `reply_to`: a queue that gets a
        copy of every event the transaction publishes.
        """


# The plumbing rows are plain SQL sent with `exec_driver_sql`: they are the per-message hot path,
# and SQL that needs no compiling (prepared once per connection by the driver) costs a fraction
# of building SQLAlchemy constructs for every message — while still running through
# SQLAlchemy's connection, whose error handling discards a cancelled or disconnected session.
# One round trip: whether the row is new, and else the body digest the earlier one kept (the
# sub-select reads the statement's snapshot, so it never sees the row this statement adds).
_INBOX = """
WITH new AS (
    INSERT INTO inbox (consumer, message_id, body_sha256) VALUES ($1, $2, $3)
    ON CONFLICT DO NOTHING RETURNING 1
)
SELECT EXISTS (SELECT FROM new),
       (SELECT body_sha256 FROM inbox WHERE consumer = $1 AND message_id = $2)
"""
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
INSERT INTO outbox (event_id, routing_key, correlation_id, body, headers, reply_to)
SELECT e, k, c, b, h::jsonb, rt
FROM unnest($12::uuid[], $13::text[], $14::uuid[], $15::text[], $16::text[], $17::text[])
     AS t(e, k, c, b, h, rt)
"""

TransactionFactory = Callable[..., TX]


class SqlAlchemyUnitOfWork(UnitOfWork[TX]):
    """Units of work against one service's database.

    `transaction(conn, actor=..., correlation_id=..., causation_id=...)` builds the service's
    `Transaction` with its repositories on `conn`; `to_wire` is the service's publishers.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        producer: str,
        metadata: sa.MetaData,
        *,
        transaction: Callable[..., TX],
        to_wire: ToWire,
    ) -> None:
        self.engine = engine
        self.producer = producer
        self._transaction = transaction
        self._to_wire = to_wire
        # The plumbing tables must be there; the SQL above names them directly.
        for name in ("outbox", "audit_log", "inbox"):
            metadata.tables[name]  # noqa: B018

    @asynccontextmanager
    async def begin(
        self,
        *,
        actor: ActorLike,
        correlation_id: uuid.UUID | None = None,
        causation_id: uuid.UUID | None = None,
        inbox: tuple[str, str] | None = None,
        reply_to: str | None = None,
    ) -> AsyncIterator[TX]:
        async with transaction(self.engine) as conn:
            if inbox is not None:
                digest = message_digest.get()
                new, known = tuple((await conn.exec_driver_sql(_INBOX, (*inbox, digest))).one())
                if not new:
                    if known is not None and digest is not None and known != digest:
                        raise InboxConflict(
                            "{} already handled message {} with a different body: a message id "
                            "names one message; send a new id for a new one".format(*inbox))
                    raise Duplicate("{} already handled message {}".format(*inbox))
            tx = self._transaction(conn, actor=actor, correlation_id=correlation_id or uuid.uuid4(),
                                   causation_id=causation_id)
            tx.reply_to = reply_to
            yield tx
            rows = self.rows_of(tx)
            if rows.audit or rows.outbox:
                await conn.exec_driver_sql(_AUDIT_AND_OUTBOX, rows.columns())
        if rows.outbox:  # a unit of work that only read (a timer's look) publishes nothing
            crashpoints.reached("after-commit-before-publish")

    def rows_of(self, tx: Transaction) -> PlumbingRows:
        """The audit and outbox rows of the events `tx` collected."""
        rows = PlumbingRows()
        for event in tx.pull_events():
            actor = event.actor or tx.actor
            fact = event.audit()
            if fact is not None:
                rows.add_audit(fact, actor, tx.correlation_id, tx.causation_id)
            wire = self._to_wire(event)
            if wire is not None:
                # An event may name its own id (to be known before commit); else a new one.
                rows.add_outbox(wire, self.producer, actor, tx.correlation_id, tx.causation_id,
                                event_id=getattr(event, "event_id", None), reply_to=tx.reply_to)
        return rows


class PlumbingRows:
    """Audit and outbox rows, as the 17 column arrays `_AUDIT_AND_OUTBOX` unnests."""

    def __init__(self) -> None:
        self.audit: list[tuple[Any, ...]] = []
        self.outbox: list[tuple[Any, ...]] = []

    def add_audit(self, fact: AuditFact, actor: ActorLike, correlation_id: uuid.UUID,
                  causation_id: uuid.UUID | None) -> None:
        self.audit.append((
            actor.id, actor.role, fact.action, fact.entity_type, fact.entity_id, fact.from_state,
            fact.to_state, fact.reason, correlation_id, causation_id,
            json.dumps(fact.details, default=str),
        ))

    def add_outbox(self, wire: WireEvent, producer: str, actor: ActorLike,
                   correlation_id: uuid.UUID, causation_id: uuid.UUID | None,
                   *, event_id: uuid.UUID | None = None,
                   reply_to: str | None = None) -> uuid.UUID:
        event_id = event_id or uuid.uuid4()
        envelope = new_envelope(type=wire.type, producer=producer, data=wire.data, actor=actor,
                                correlation_id=correlation_id, causation_id=causation_id,
                                event_id=event_id)
        headers: dict[str, str] = {}
        propagate.inject(headers)  # the relay continues this trace when it publishes
        self.outbox.append((
            event_id, wire.type, correlation_id,
            json.dumps(envelope, separators=(",", ":"), default=str), json.dumps(headers),
            reply_to,
        ))
        return event_id

    def columns(self) -> tuple[list[Any], ...]:
        audit = [list(column) for column in zip(*self.audit, strict=True)] or [[] for _ in range(11)]
        outbox = [list(column) for column in zip(*self.outbox, strict=True)] or [[] for _ in range(6)]
        return (*audit, *outbox)


class ConnTransaction(Transaction):
    """A transaction on a SQL connection: what a service's repositories are built on."""

    def __init__(self, conn: AsyncConnection, **context: Any) -> None:
        super().__init__(**context)
        self.conn = conn
