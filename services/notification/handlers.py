"""Notification use cases: each takes a command and the unit of work, and commits one effect."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from services.notification.domain import (
    FAILED,
    SENT,
    SYSTEM_ACTOR,
    Claimed,
    DeliveryNotFound,
    DeliveryOutcome,
    DeliveryRetried,
    EventObserved,
    Message,
    NotificationsQueued,
    NotRetriable,
    ObservedEvent,
    PeopleImportReport,
    PersonUpserted,
    Render,
    Rule,
    notifications,
    read_people,
)
from services.notification.unit_of_work import NotificationUnitOfWork
from shared.contracts.envelope import ActorLike
from shared.domain import ROLES


def _untemplated(rule: Rule, _: Any) -> Message:
    return Message(rule.title, rule.body, rule.html or "")


@dataclass(frozen=True)
class RecordEvent:
    """Keep one observed event, once, and tell whom the rules name."""

    consumer: str
    event: ObservedEvent
    rules: tuple[Rule, ...] = ()
    render: Render = field(default=_untemplated, compare=False)


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
        # Who must hear of it: in the same transaction, so a redelivery tells nobody twice. Only
        # rows are written here (the inbox's sent, the outbound ones pending): the sender worker
        # sends, outside any message's transaction, so no mail server holds up the queue.
        queued = await tx.observed.deliver(event, notifications(cmd.rules, event, cmd.render))
        if queued:
            tx.collect(NotificationsQueued(event=event, count=queued))
        return True


@dataclass(frozen=True)
class ClaimDue:
    """Take up to `limit` due deliveries of one channel for one attempt each."""

    channel: str
    limit: int
    lease_s: float


async def claim_due(cmd: ClaimDue, uow: NotificationUnitOfWork) -> list[Claimed]:
    async with uow.begin(actor=SYSTEM_ACTOR) as tx:
        return await tx.deliveries.claim(cmd.channel, cmd.limit, cmd.lease_s)


@dataclass(frozen=True)
class RecordSent:
    """The channel accepted the delivery: `sent`, and `notification.delivered` in one commit."""

    delivery: Claimed


async def record_sent(cmd: RecordSent, uow: NotificationUnitOfWork) -> bool:
    d = cmd.delivery
    async with uow.begin(actor=SYSTEM_ACTOR, correlation_id=d.correlation_id,
                         causation_id=d.event_id) as tx:
        if not await tx.deliveries.sent(d.id):
            return False  # an earlier attempt (its lease ran out) recorded it first
        tx.collect(DeliveryOutcome(delivery=d, status=SENT))
        return True


@dataclass(frozen=True)
class RecordAttemptFailed:
    """The attempt failed: try again after `retry_in_s`, or (None) give up and say so."""

    delivery: Claimed
    error: str
    retry_in_s: float | None


async def record_attempt_failed(cmd: RecordAttemptFailed, uow: NotificationUnitOfWork) -> bool:
    d = cmd.delivery
    async with uow.begin(actor=SYSTEM_ACTOR, correlation_id=d.correlation_id,
                         causation_id=d.event_id) as tx:
        if not await tx.deliveries.attempt_failed(d.id, cmd.error, cmd.retry_in_s):
            return False
        if cmd.retry_in_s is None:
            tx.collect(DeliveryOutcome(delivery=d, status=FAILED, error=cmd.error))
        return True


@dataclass(frozen=True)
class RetryDelivery:
    """Ops sends a failed delivery again (its attempts start from zero)."""

    delivery_id: uuid.UUID
    actor: ActorLike


async def retry_delivery(cmd: RetryDelivery, uow: NotificationUnitOfWork) -> None:
    async with uow.begin(actor=cmd.actor) as tx:
        before = await tx.deliveries.retry(cmd.delivery_id)
        if before is None:
            raise DeliveryNotFound(f"no delivery {cmd.delivery_id}")
        if before["status"] != FAILED:
            raise NotRetriable(f"delivery {cmd.delivery_id} is {before['status']}; only a failed "
                               "delivery can be retried")
        tx.collect(DeliveryRetried(delivery_id=cmd.delivery_id,
                                   previous_attempts=before["attempts"],
                                   previous_error=before["last_error"]))


@dataclass(frozen=True)
class ImportPeople:
    """Load a people CSV: bad rows reported and skipped, changed rows written, others left."""

    filename: str
    content: bytes
    actor: ActorLike
    dry_run: bool = False


async def import_people(cmd: ImportPeople, uow: NotificationUnitOfWork) -> PeopleImportReport:
    people, problems = read_people(cmd.content, ROLES)  # UnreadablePeopleFile: nothing read
    report = PeopleImportReport(cmd.filename, len(people) + len(problems), problems=problems)
    async with uow.begin(actor=cmd.actor) as tx:
        stored = await tx.people.get_many([p.id for p in people])
        changed = []
        for person in people:
            fields = person.changed_fields(stored.get(person.id))
            if not fields:
                report.unchanged += 1
                continue
            new = person.id not in stored
            report.created += new
            report.updated += not new
            changed.append(person)
            tx.collect(PersonUpserted(person=person, fields=tuple(fields), new=new))
        if not cmd.dry_run:
            await tx.people.upsert(changed)
        else:
            tx.pull_events()  # a dry run writes nothing, not even its audit rows
    return report


Handler = Callable[[Any, NotificationUnitOfWork], Awaitable[Any]]

# Command type → handler: the edges build a command and hand it here.
HANDLERS: dict[type[Any], Handler] = {
    RecordEvent: record_event,
    ClaimDue: claim_due,
    RecordSent: record_sent,
    RecordAttemptFailed: record_attempt_failed,
    RetryDelivery: retry_delivery,
    ImportPeople: import_people,
}


async def handle(cmd: Any, uow: NotificationUnitOfWork) -> Any:
    """Run the handler of `cmd`'s type."""
    return await HANDLERS[type(cmd)](cmd, uow)
