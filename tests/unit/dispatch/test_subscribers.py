"""The dispatch service's message edges, in memory (FastStream's TestRabbitBroker, a fake unit of work)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from faststream.rabbit import TestRabbitBroker
from faststream.rabbit.annotations import RabbitMessage

from services.dispatch import subscribers
from services.dispatch.domain import Status
from shared.contracts.envelope import Actor, new_envelope
from shared.messaging.broker import make_broker
from shared.messaging.provenance import DEVELOPMENT, Senders
from shared.messaging.topology import ERROR_HEADER, QUEUE_HEADER, Topology
from tests.unit.dispatch.fakes import fake_unit_of_work

TOPOLOGY = Topology("unit")

CONFIRMED = {
    "order_id": "o-1", "external_ref": "EXT-1", "source": "mes", "version": 2,
    "customer_id": "C-100", "requested_ship_date": "2026-12-24", "priority": "rush",
    "ship_to": {"name": "Plant 2", "street": "Road 1", "city": "Linz", "postal_code": "4020",
                "country": "AT"},
    "lines": [{"line_no": 1, "product_id": "P-200", "quantity": "4", "uom": "EA"}],
}


def envelope(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    return new_envelope(type=event_type, producer="order", data=data,
                        actor=Actor(id="order", role="system"))


async def publish(broker: Any, event_type: str, body: dict[str, Any]) -> None:
    await broker.publish(json.dumps(body).encode(), exchange=TOPOLOGY.events,
                         routing_key=event_type, message_id=body["event_id"],
                         content_type="application/json", user_id="guest")


async def test_order_confirmed_becomes_a_create_dispatch_with_the_order_as_the_contract_says() -> None:
    uow, store = fake_unit_of_work()
    broker = make_broker("amqp://unused", service="dispatch", topology=TOPOLOGY, prefetch=1)
    subscribers.register(broker, TOPOLOGY, uow)
    async with TestRabbitBroker(broker) as test_broker:
        body = envelope("order.confirmed", CONFIRMED)
        await publish(test_broker, "order.confirmed", body)

    [dispatch] = store.rows.values()
    assert (dispatch.order_id, dispatch.status, dispatch.correlation_id) == (
        "o-1", Status.PENDING, uuid.UUID(body["correlation_id"]))
    assert dispatch.order is not None and dispatch.order.priority == "rush"
    assert [(line.line_no, str(line.quantity)) for line in dispatch.lines] == [(1, "4")]
    assert uow.inbox == {(TOPOLOGY.queue_name("dispatch", "order-confirmed"), body["event_id"])}


async def test_order_cancelled_becomes_a_cancellation_of_that_orders_dispatch() -> None:
    uow, store = fake_unit_of_work()
    broker = make_broker("amqp://unused", service="dispatch", topology=TOPOLOGY, prefetch=1)
    subscribers.register(broker, TOPOLOGY, uow)
    async with TestRabbitBroker(broker) as test_broker:
        await publish(test_broker, "order.confirmed", envelope("order.confirmed", CONFIRMED))
        await publish(test_broker, "order.cancelled", envelope(
            "order.cancelled", {"order_id": "o-1", "version": 3, "reason": "customer changed"}))

    [dispatch] = store.rows.values()
    assert dispatch.status == Status.CANCELLED
    assert uow.published_types() == ["dispatch.created", "dispatch.cancelled"]


@pytest.mark.parametrize(("broken", "reason"), [({"order_id": ""}, "data.order_id"),
                                                ({"lines": "none"}, "data.lines")])
async def test_an_order_confirmed_that_breaks_the_contract_is_dead_lettered_with_its_reason(
    broken: dict[str, Any], reason: str,
) -> None:
    uow, store = fake_unit_of_work()
    broker = make_broker("amqp://unused", service="dispatch", topology=TOPOLOGY, prefetch=1)
    subscribers.register(broker, TOPOLOGY, uow)
    queue = TOPOLOGY.queue_name("dispatch", "order-confirmed")
    dead: list[dict[str, Any]] = []

    @broker.subscriber(TOPOLOGY.dead_letter_queue(queue), TOPOLOGY.dead_letters)
    async def dead_letters(_: Any, message: RabbitMessage) -> None:
        dead.append(dict(message.headers))

    async with TestRabbitBroker(broker) as test_broker:
        await publish(test_broker, "order.confirmed",
                      envelope("order.confirmed", {**CONFIRMED, **broken}))
    assert not store.rows and not uow.published
    [headers] = dead
    assert headers[QUEUE_HEADER] == queue
    assert headers[ERROR_HEADER].startswith("contract violation") and reason in headers[ERROR_HEADER]


# Production's users: one per service, and the outside system `mes`.
PRODUCTION = Senders.of({"order": "order", "dispatch": "dispatch", "mes": "mes"})


@pytest.mark.parametrize(("producer", "user_id", "senders", "reason"), [
    ("mes", "guest", DEVELOPMENT, "producer 'mes' may not publish order.confirmed"),
    ("order", None, DEVELOPMENT, "order.confirmed has no user_id"),
    ("order", "mallory", DEVELOPMENT, "user_id 'mallory' is not a Spine broker user"),
    ("order", "mes", PRODUCTION, "broker user 'mes' may not publish order.confirmed"),
    ("order", "dispatch", PRODUCTION, "broker user 'dispatch' may not publish order.confirmed"),
], ids=["wrong-producer", "no-user-id", "unknown-user-id", "outside-system", "other-service"])
async def test_a_forged_order_confirmed_is_dead_lettered_with_its_reason_and_opens_no_dispatch(
    producer: str, user_id: str | None, senders: Senders, reason: str,
) -> None:
    uow, store = fake_unit_of_work()
    broker = make_broker("amqp://unused", service="dispatch", topology=TOPOLOGY, prefetch=1,
                         senders=senders)
    subscribers.register(broker, TOPOLOGY, uow)
    queue = TOPOLOGY.queue_name("dispatch", "order-confirmed")
    dead: list[dict[str, Any]] = []

    @broker.subscriber(TOPOLOGY.dead_letter_queue(queue), TOPOLOGY.dead_letters)
    async def dead_letters(_: Any, message: RabbitMessage) -> None:
        dead.append(dict(message.headers))

    body = new_envelope(type="order.confirmed", producer=producer, data=CONFIRMED,
                        actor=Actor(id="order", role="system"))
    async with TestRabbitBroker(broker) as test_broker:
        await test_broker.publish(json.dumps(body).encode(), exchange=TOPOLOGY.events,
                                  routing_key="order.confirmed", message_id=body["event_id"],
                                  content_type="application/json", user_id=user_id)

    assert not store.rows and not uow.published and not uow.inbox
    [headers] = dead
    assert headers[QUEUE_HEADER] == queue
    assert headers[ERROR_HEADER].startswith("ProvenanceError: provenance:")
    assert reason in headers[ERROR_HEADER]


async def test_an_order_confirmed_from_the_order_services_own_user_opens_its_dispatch() -> None:
    uow, store = fake_unit_of_work()
    broker = make_broker("amqp://unused", service="dispatch", topology=TOPOLOGY, prefetch=1,
                         senders=PRODUCTION)
    subscribers.register(broker, TOPOLOGY, uow)
    body = envelope("order.confirmed", CONFIRMED)
    async with TestRabbitBroker(broker) as test_broker:
        await test_broker.publish(json.dumps(body).encode(), exchange=TOPOLOGY.events,
                                  routing_key="order.confirmed", message_id=body["event_id"],
                                  content_type="application/json", user_id="order")

    [dispatch] = store.rows.values()
    assert dispatch.order_id == "o-1"
