"""A throwaway service for plumbing tests: the v1 plumbing tables, a `widget` table, and a
transaction that writes raw audit rows and wire events, so the outbox, relay and inbox can be
exercised without any service's domain."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db.engine import new_metadata
from shared.db.plumbing import plumbing_tables, upgrade_plumbing_v1, upgrade_plumbing_v2
from shared.domain import AuditFact, DomainEvent
from shared.uow import ConnTransaction, SqlAlchemyUnitOfWork, WireEvent

METADATA = new_metadata()
OUTBOX, INBOX, AUDIT = plumbing_tables(METADATA)
WIDGET = sa.Table(
    "widget",
    METADATA,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("n", sa.Integer),
)


def create_schema(sync_conn: Connection) -> None:
    """What a service's plumbing revisions do, plus the test's own business table."""
    ops = Operations(MigrationContext.configure(sync_conn))
    upgrade_plumbing_v1(ops)
    upgrade_plumbing_v2(ops)
    WIDGET.create(sync_conn)


@dataclass(frozen=True)
class Recorded(DomainEvent):
    fact: AuditFact

    def audit(self) -> AuditFact:
        return self.fact


@dataclass(frozen=True)
class Emitted(DomainEvent):
    type: str
    data: dict[str, Any]
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)

    def audit(self) -> None:
        return None


class WidgetTransaction(ConnTransaction):
    """`record` an audit row or `emit` a wire event by hand (a service does it via its domain)."""

    def record(self, **fact: Any) -> None:
        self.collect(Recorded(AuditFact(**fact)))

    def emit(self, event_type: str, data: dict[str, Any]) -> uuid.UUID:
        emitted = Emitted(event_type, data)
        self.collect(emitted)
        return emitted.event_id


def _to_wire(event: DomainEvent) -> WireEvent | None:
    return WireEvent(event.type, event.data) if isinstance(event, Emitted) else None


WidgetUow = SqlAlchemyUnitOfWork[WidgetTransaction]


def widget_unit_of_work(engine: AsyncEngine, producer: str) -> WidgetUow:
    return SqlAlchemyUnitOfWork(engine, producer, METADATA, transaction=WidgetTransaction,
                                to_wire=_to_wire)
