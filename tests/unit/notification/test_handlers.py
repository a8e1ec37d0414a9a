"""The notification use cases against a fake unit of work: what each keeps, and what it refuses."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from services.notification.domain import AggregateRef, EventObserved, ObservedEvent
from services.notification.handlers import (
    HANDLERS,
    ClaimDue,
    ImportPeople,
    RecordAttemptFailed,
    RecordEvent,
    RecordSent,
    RetryDelivery,
    handle,
)
from shared.uow import Duplicate
from tests.unit.notification.fakes import FakeNotification, fake_unit_of_work

EVENTS_QUEUE = "spine.notification.events"
ORDER_QUEUE = "spine.notification.order-events"


def observed(event_type: str = "dispatch.packed") -> ObservedEvent:
    return ObservedEvent(
        event_id=uuid.uuid4(), type=event_type, producer="dispatch",
        occurred_at=datetime(2026, 11, 27, 10, tzinfo=UTC), correlation_id=uuid.uuid4(),
        causation_id=uuid.uuid4(), actor_id="u-7", actor_role="warehouse",
        aggregate=AggregateRef("dispatch", "d-1", 4),
        data={"dispatch_id": "d-1", "order_id": "o-1", "version": 4, "status": "packed"},
    )


@pytest.fixture
def fake() -> FakeNotification:
    return fake_unit_of_work()


async def test_an_event_is_kept_once_with_no_audit_row_and_nothing_published(
    fake: FakeNotification,
) -> None:
    event = observed()
    assert await handle(RecordEvent(consumer=EVENTS_QUEUE, event=event), fake.uow) is True

    assert fake.observed.rows == {event.event_id: event}
    assert fake.uow.audit == [] and fake.uow.published == []
    assert fake.uow.inbox == {(EVENTS_QUEUE, str(event.event_id))}


async def test_the_unit_of_work_acts_as_the_service_within_the_events_journey(
    fake: FakeNotification,
) -> None:
    event = observed()
    await handle(RecordEvent(consumer=EVENTS_QUEUE, event=event), fake.uow)

    [tx] = fake.transactions
    assert (tx.actor.id, tx.actor.role) == ("notification", "system")
    assert (tx.correlation_id, tx.causation_id) == (event.correlation_id, event.event_id)


async def test_keeping_an_event_records_that_it_was_observed(fake: FakeNotification) -> None:
    event = observed()
    await handle(RecordEvent(consumer=EVENTS_QUEUE, event=event), fake.uow)
    assert fake.events == [EventObserved(observed=event)]


async def test_the_same_message_twice_is_refused_by_the_inbox_and_kept_once(
    fake: FakeNotification,
) -> None:
    cmd = RecordEvent(consumer=EVENTS_QUEUE, event=observed())
    await handle(cmd, fake.uow)
    with pytest.raises(Duplicate):
        await handle(cmd, fake.uow)
    assert len(fake.observed.rows) == 1 and fake.uow.commits == 1


async def test_the_same_event_through_a_second_queue_is_not_kept_twice(
    fake: FakeNotification,
) -> None:
    event = observed("order.confirmed")
    assert await handle(RecordEvent(consumer=EVENTS_QUEUE, event=event), fake.uow) is True
    assert await handle(RecordEvent(consumer=ORDER_QUEUE, event=event), fake.uow) is False

    assert list(fake.observed.rows) == [event.event_id]
    assert fake.events == [EventObserved(observed=event)]  # observed once, not once per queue
    # The second queue's inbox still remembers it, so its redelivery is a duplicate too.
    assert fake.uow.inbox == {(EVENTS_QUEUE, str(event.event_id)),
                              (ORDER_QUEUE, str(event.event_id))}


def test_every_command_has_exactly_one_handler() -> None:
    assert set(HANDLERS) == {RecordEvent, ClaimDue, RecordSent, RecordAttemptFailed,
                             RetryDelivery, ImportPeople}
