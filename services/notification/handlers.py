"""Notification use cases: each takes a command and the unit of work, and commits one effect."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from services.notification.domain import (
    SYSTEM_ACTOR,
    EventObserved,
    NotificationsQueued,
    ObservedEvent,
    Rule,
    notifications,
)
from services.notification.unit_of_work import NotificationUnitOfWork


@dataclass(frozen=True)
class RecordEvent:
    """Keep one observed event, once, and tell whom the rules name."""

    consumer: str
    event: ObservedEvent
    rules: tuple[Rule, ...] = ()


async def record_event(cmd: RecordEvent, uow: NotificationUnitOfWork) -> bool:
    """True when stored now; raises `Duplicate` when this consumer had the message already."""
    event = cmd.event
    async with uow.begin(
        actor=SYSTEM_ACTOR,
        correlation_id=event.correlation_id,
        causation_id=event.event_id,
        inbox=(cmd.consumer, str(event.event_id)),
    ) as tx:
        if not await tx.observed.add(event):
            return False
        # Nothing records this event but the handler: an observation is a copy, not an aggregate.
        tx.collect(EventObserved(observed=event))
        # Who must hear of it: in the same transaction, so a redelivery tells nobody twice.
        queued = await tx.observed.deliver(event, notifications(cmd.rules, event))
        if queued:
            tx.collect(NotificationsQueued(event=event, count=queued))
        return True


Handler = Callable[[Any, NotificationUnitOfWork], Awaitable[Any]]

# Command type → handler: the edges build a command and hand it here.
HANDLERS: dict[type[Any], Handler] = {
    RecordEvent: record_event,
}


async def handle(cmd: Any, uow: NotificationUnitOfWork) -> Any:
    """Run the handler of `cmd`'s type."""
    return await HANDLERS[type(cmd)](cmd, uow)
