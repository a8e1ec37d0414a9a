"""The order service's message edges, in memory (FastStream's TestRabbitBroker, a fake unit of work)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from faststream.rabbit import RabbitBroker, TestRabbitBroker
from faststream.rabbit.annotations import RabbitMessage

from services.order import subscribers
from services.order.domain import Status
from shared.contracts.envelope import Actor, new_envelope
from shared.messaging.broker import make_broker
from shared.messaging.topology import ERROR_HEADER, QUEUE_HEADER, Topology
from tests.unit.fakes import FakeUnitOfWork
from tests.unit.order.fakes import Replica, Stores, fake_unit_of_work

TOPOLOGY = Topology("unit")
SUBMITTED_QUEUE = TOPOLOGY.queue_name("order", "order-submitted")

SHIP_TO = {"name": "Nordwerk GmbH", "street": "Hafenstr. 1", "city": "Bremen",
           "postal_code": "28195", "country": "DE"}
SUBMISSION: dict[str, Any] = {
    "external_ref": "WS-1", "customer_id": "C-1", "requested_ship_date": "2026-12-01",
    "priority": "rush",
    "ship_to": SHIP_TO,
    "lines": [{"line_no": 1, "product_id": "P-1", "quantity": "4", "uom": "EA"}],
    "confirmed": False,
}


def envelope(event_type: str, data: Any, *, producer: str = "webshop") -> dict[str, Any]:
    return new_envelope(type=event_type, producer=producer, data=data,
                        actor=Actor(id="u-1042", role="sales"))


@dataclass
class Harness:
    """The subscribers on an in-memory broker, what they committed, and what was dead-lettered."""

    broker: Any
    uow: FakeUnitOfWork[Any]
    stores: Stores
    dead: list[dict[str, Any]] = field(default_factory=list)

    async def publish(self, routing_key: str, body: bytes | dict[str, Any]) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        message_id = body["event_id"] if isinstance(body, dict) else _event_id(raw)
        await self.broker.publish(raw, exchange=TOPOLOGY.events, routing_key=routing_key,
                                  message_id=message_id, content_type="application/json",
                                  user_id="guest")


def _event_id(raw: bytes) -> str:
    """The envelope's id where the bytes still have one (AMQP message_id = event_id), else new."""
    try:
        return str(json.loads(raw)["event_id"])
    except (ValueError, KeyError, TypeError, RecursionError):
        return str(uuid.uuid4())


async def _raw(message: Any) -> bytes:
    return bytes(message.body)


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    uow, stores = fake_unit_of_work()
    stores.customers.rows["C-1"] = Replica("Customer 1", True, 1)
    stores.products.rows["P-1"] = Replica("Bolt", True, 1, "EA")
    broker: RabbitBroker = make_broker("amqp://unused", service="order", topology=TOPOLOGY,
                                       prefetch=1)
    subscribers.register(broker, TOPOLOGY, uow)
    dead: list[dict[str, Any]] = []

    # The body stays bytes: a dead letter need not be JSON, and the test broker decodes each one.
    @broker.subscriber(TOPOLOGY.dead_letter_queue(SUBMITTED_QUEUE), TOPOLOGY.dead_letters,
                       decoder=_raw)
    async def dead_letters(_: Any, message: RabbitMessage) -> None:
        dead.append(dict(message.headers))

    async with TestRabbitBroker(broker) as test_broker:
        yield Harness(test_broker, uow, stores, dead)


async def test_a_submission_becomes_an_order_from_the_system_its_routing_key_names(
    harness: Harness,
) -> None:
    body = envelope("ext.webshop.order.submitted", {**SUBMISSION, "confirmed": True})
    await harness.publish("ext.webshop.order.submitted", body)

    [order] = harness.stores.orders.rows.values()
    assert (order.source, order.external_ref, order.status) == ("webshop", "WS-1", Status.CONFIRMED)
    assert str(order.correlation_id) == body["correlation_id"]
    assert harness.uow.published_types() == ["order.received", "order.confirmed"]
    assert harness.uow.inbox == {(SUBMITTED_QUEUE, body["event_id"])}


async def test_an_invalid_order_is_answered_with_readable_reasons_and_dead_lettered(
    harness: Harness,
) -> None:
    data = {**SUBMISSION, "ship_to": {**SHIP_TO, "country": "de"},
            "lines": [{"line_no": 3, "product_id": "P-999", "quantity": "0", "uom": "EA"}]}
    await harness.publish("ext.webshop.order.submitted",
                          envelope("ext.webshop.order.submitted", data))

    assert not harness.stores.orders.rows
    [headers] = harness.dead
    assert headers[ERROR_HEADER] == ("contract violation: ship_to.country: must be a two-letter "
                                     "ISO 3166 code; line 3: quantity must be greater than 0")
    [(_, _, wire)] = harness.uow.published
    assert wire.type == "order.rejected"
    assert (wire.data["source"], wire.data["external_ref"]) == ("webshop", "WS-1")
    assert wire.data["reasons"] == [
        "ship_to.country: must be a two-letter ISO 3166 code",
        "line 3: quantity must be greater than 0",
        "line 3: product P-999 is unknown",
    ]


@pytest.mark.parametrize(("body", "reason"), [
    (b"\x00\xffnot json at all", "body is not JSON"),
    (json.dumps({"type": "ext.webshop.order.submitted"}).encode(), "contract violation"),
    (json.dumps({**envelope("ext.webshop.order.submitted", SUBMISSION), "version": 2}).encode(),
     "envelope version 2 is not supported"),
    (json.dumps(envelope("ext.webshop.order.cancelled", SUBMISSION)).encode(),
     "differs from its routing key"),
    (json.dumps({**envelope("ext.webshop.order.submitted", SUBMISSION), "actor": 7}).encode(),
     "actor"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
])
async def test_a_broken_envelope_is_answered_and_dead_lettered_with_its_reason(
    harness: Harness, body: bytes, reason: str,
) -> None:
    await harness.publish("ext.webshop.order.submitted", body)

    assert not harness.stores.orders.rows
    [(actor, _, answer)] = harness.uow.published
    assert answer.type == "order.rejected" and (actor.id, actor.role) == ("webshop", "system")
    assert answer.data["source"] == "webshop"
    assert any(reason in line for line in answer.data["reasons"]), answer.data["reasons"]
    [headers] = harness.dead
    assert headers[QUEUE_HEADER] == SUBMITTED_QUEUE and reason in headers[ERROR_HEADER]


async def test_a_redelivered_broken_envelope_is_answered_once_and_dead_lettered_again(
    harness: Harness,
) -> None:
    body = json.dumps({**envelope("ext.webshop.order.submitted", SUBMISSION), "version": 3})
    for _ in range(2):
        await harness.publish("ext.webshop.order.submitted", body.encode())

    assert harness.uow.published_types() == ["order.rejected"]
    assert len(harness.dead) == 2


async def test_a_machine_sender_may_leave_the_actor_out_and_then_the_system_acts(
    harness: Harness,
) -> None:
    for actor in ("missing", None):
        body = envelope("ext.webshop.order.submitted",
                        {**SUBMISSION, "external_ref": f"WS-{actor}"})
        if actor == "missing":
            del body["actor"]
        else:
            body["actor"] = None
        await harness.publish("ext.webshop.order.submitted", body)

    assert not harness.dead
    assert harness.uow.published_types() == ["order.received", "order.received"]
    assert {(who.id, who.role) for who, _, _ in harness.uow.published} == {("webshop", "system")}


async def test_answers_also_go_to_the_reply_to_queue_the_sender_named(harness: Harness) -> None:
    good = envelope("ext.webshop.order.submitted", SUBMISSION)
    bad = envelope("ext.webshop.order.submitted", {**SUBMISSION, "external_ref": "WS-2",
                                                    "lines": []})
    for body in (good, bad):
        await harness.broker.publish(json.dumps(body).encode(), exchange=TOPOLOGY.events,
                                     routing_key="ext.webshop.order.submitted",
                                     message_id=body["event_id"], user_id="guest",
                                     content_type="application/json", reply_to="webshop.answers")

    # Only Spine's answers: FastStream's own reply (the handler's return value) is switched off,
    # so nothing comes back to the subscriber as an unknown message.
    [headers] = harness.dead
    assert headers[ERROR_HEADER].startswith("contract violation: lines"), headers
    assert harness.uow.replies == [("webshop.answers", "order.received"),
                                   ("webshop.answers", "order.rejected")]


async def test_a_sender_speaking_for_another_system_is_dead_lettered_and_not_answered(
    harness: Harness,
) -> None:
    await harness.publish("ext.webshop.order.submitted",
                          envelope("ext.webshop.order.submitted", SUBMISSION, producer="mes"))

    assert not harness.uow.published
    [headers] = harness.dead
    assert "provenance" in headers[ERROR_HEADER]


async def test_a_submission_whose_routing_key_names_no_valid_system_is_dead_lettered(
    harness: Harness,
) -> None:
    # Its producer matches the key, so the provenance check lets it reach the subscriber.
    await harness.publish("ext.Web Shop.order.submitted",
                          envelope("ext.Web Shop.order.submitted", SUBMISSION, producer="Web Shop"))

    assert not harness.uow.published and not harness.uow.inbox
    [headers] = harness.dead
    assert "names no valid outside system" in headers[ERROR_HEADER]


async def test_erp_upserts_keep_the_replicas_orders_are_checked_against(harness: Harness) -> None:
    await harness.publish("erp.customer.upserted", envelope(
        "erp.customer.upserted", {"customer_id": "C-2", "name": "Two", "active": False,
                                  "version": 4}, producer="erp_adapter"))
    await harness.publish("erp.product.upserted", envelope(
        "erp.product.upserted", {"product_id": "P-2", "name": "Cable", "uom": "M",
                                 "active": True, "version": 2}, producer="erp_adapter"))

    assert harness.stores.customers.rows["C-2"] == Replica("Two", False, 4)
    assert harness.stores.products.rows["P-2"] == Replica("Cable", True, 2, "M")
    assert [f.action for _, f in harness.uow.audit] == ["customer.inserted", "product.inserted"]
