"""Notification use cases: each takes a command and the unit of work and commits its effect."""

from __future__ import annotations

from dataclasses import dataclass

from services.notification.domain import ObservedEvent
from services.notification.repository import SqlAlchemyObservedEventRepository
from shared.contracts.envelope import Actor
from shared.uow import UnitOfWork

SYSTEM = Actor(id="notification", role="system")


@dataclass(frozen=True)
class RecordEvent:
    """Keep one observed event, once, for the notification rules to read."""

    consumer: str
    event: ObservedEvent


async def record_event(cmd: RecordEvent, uow: UnitOfWork) -> bool:
    """True when stored now; raises `Duplicate` when this consumer had the message already."""
    event = cmd.event
    async with uow.begin(
        actor=SYSTEM,
        correlation_id=event.correlation_id,
        causation_id=event.event_id,
        inbox=(cmd.consumer, str(event.event_id)),
    ) as tx:
        return await SqlAlchemyObservedEventRepository(tx.conn).add(event)
