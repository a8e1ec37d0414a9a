"""The notification service's message edges, in memory (TestRabbitBroker, a fake unit of work)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from faststream.exceptions import SubscriberNotFound
from faststream.rabbit import RabbitBroker, TestRabbitBroker
from faststream.rabbit.annotations import RabbitMessage

from services.notification import subscribers
from services.notification.domain import AggregateRef
from shared.contracts.envelope import Actor, new_envelope
from shared.messaging.broker import make_broker
from shared.messaging.topology import ERROR_HEADER, QUEUE_HEADER, Topology
from tests.unit.notification.fakes import FakeNotification, fake_unit_of_work

TOPOLOGY = Topology("unit")
EVENTS_QUEUE = TOPOLOGY.queue_name("notification", "events")
# The in-memory broker routes along the subscriber's own binding (the first of the rules'
# event types); the runtime's other bindings are proven against RabbitMQ (integration tests).
BOUND = "dispatch.approval.approved"


def envelope(event_type: str, data: dict[str, Any], producer: str = "dispatch") -> dict[str, Any]:
    return new_envelope(type=event_type, producer=producer, data=data,
                        actor=Actor(id="u-7", role="warehouse"))


async def publish(broker: Any, event_type: str, body: dict[str, Any] | bytes,
                  message_id: str | None = None) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    await broker.publish(raw, exchange=TOPOLOGY.events, routing_key=event_type,
                         message_id=message_id or (body["event_id"] if isinstance(body, dict) else None),
                         content_type="application/json", user_id="guest")


async def raw_body(message: Any) -> Any:
    return message.body


def service() -> tuple[FakeNotification, RabbitBroker]:
    fake = fake_unit_of_work()
    broker = make_broker("amqp://unused", service="notification", topology=TOPOLOGY, prefetch=1)
    subscribers.register(broker, TOPOLOGY, fake.uow)
    return fake, broker


async def test_a_dispatch_event_is_kept_about_its_dispatch_through_the_events_queue() -> None:
    fake, broker = service()
    body = envelope(BOUND,
                    {"dispatch_id": "d-1", "order_id": "o-1", "version": 4, "approval_id": "a-9",
                     "unknown_to_this_service": [1, 2]})
    async with TestRabbitBroker(broker) as test_broker:
        await publish(test_broker, BOUND, body)

    [kept] = fake.observed.rows.values()
    assert (str(kept.event_id), kept.type, kept.producer, kept.actor_id, kept.actor_role) == (
        body["event_id"], BOUND, "dispatch", "u-7", "warehouse")
    assert kept.aggregate == AggregateRef("dispatch", "d-1", 4)
    assert kept.correlation_id == uuid.UUID(body["correlation_id"])
    assert kept.data["unknown_to_this_service"] == [1, 2]  # a loose envelope keeps all of it
    assert fake.uow.inbox == {(EVENTS_QUEUE, body["event_id"])}


async def test_events_no_rule_names_reach_no_notification_queue() -> None:
    # Its queue binds the rules' event types; order.received with no outside listener is kept
    # by the alternate exchange, not by a queue here that exists only to take it.
    fake, broker = service()
    body = envelope("order.received", {"order_id": "o-1", "version": 1}, producer="order")
    async with TestRabbitBroker(broker) as test_broker:
        with pytest.raises(SubscriberNotFound):
            await publish(test_broker, "order.received", body)
    assert not fake.observed.rows


async def test_a_redelivered_message_is_acked_and_kept_once() -> None:
    fake, broker = service()
    body = envelope(BOUND, {"dispatch_id": "d-1", "order_id": "o-1", "version": 1})
    dead: list[Any] = []

    @broker.subscriber(TOPOLOGY.dead_letter_queue(EVENTS_QUEUE), TOPOLOGY.dead_letters)
    async def dead_letters(message: Any) -> None:
        dead.append(message)

    async with TestRabbitBroker(broker) as test_broker:
        await publish(test_broker, BOUND, body)
        await publish(test_broker, BOUND, body)

    assert len(fake.observed.rows) == 1 and fake.uow.commits == 1
    assert dead == []


async def test_reference_data_events_reach_no_notification_queue() -> None:
    # Binding `#` would take every erp.* event too, for nothing the rules use.
    fake, broker = service()
    body = envelope("erp.customer.upserted", {"customer_id": "C-1", "name": "Acme", "active": True},
                    producer="erp_adapter")
    async with TestRabbitBroker(broker) as test_broker:
        with pytest.raises(SubscriberNotFound):
            await publish(test_broker, "erp.customer.upserted", body)
    assert not fake.observed.rows


@pytest.mark.parametrize(("raw", "reason"), [
    (b"this is not json", "body is not JSON"),
    (b'{"type": "dispatch.approval.approved"}', "event_id"),
])
async def test_a_message_that_breaks_the_envelope_is_dead_lettered_with_its_reason(
    raw: bytes, reason: str,
) -> None:
    fake, broker = service()
    dead: list[dict[str, Any]] = []

    # The dead letter keeps the broken body: this observer must not try to read it as JSON.
    @broker.subscriber(TOPOLOGY.dead_letter_queue(EVENTS_QUEUE), TOPOLOGY.dead_letters,
                       decoder=raw_body)
    async def dead_letters(_: bytes, message: RabbitMessage) -> None:
        dead.append(dict(message.headers))

    async with TestRabbitBroker(broker) as test_broker:
        await publish(test_broker, BOUND, raw, message_id="garbage-1")

    assert not fake.observed.rows and not fake.uow.inbox
    [headers] = dead
    assert headers[QUEUE_HEADER] == EVENTS_QUEUE
    assert reason in headers[ERROR_HEADER]
