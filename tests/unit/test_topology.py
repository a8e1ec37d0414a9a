"""The topology table: what each service consumes, topic routing, and telling queues apart."""

from __future__ import annotations

import importlib

import pytest
from faststream.rabbit.subscriber import RabbitSubscriber
from sqlalchemy.ext.asyncio import create_async_engine

from shared.messaging.broker import make_broker
from shared.messaging.delivery import DeliveryPolicy
from shared.messaging.topology import (
    CONSUMER_QUEUES,
    Topology,
    bindings_overlap,
    consumer_queues,
    topic_matches,
)

TOPOLOGY = Topology("unit")


@pytest.mark.parametrize("service", sorted(CONSUMER_QUEUES))
def test_each_service_subscribes_to_exactly_the_queues_the_table_lists(service: str) -> None:
    # The runtime declares dead-letter queues, and the delivery policy names queues, from the
    # table: a subscriber on a queue the table does not list would have neither.
    broker = make_broker("amqp://unused/", service=service, topology=TOPOLOGY, prefetch=1)
    engine = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")  # never used
    unit_of_work = importlib.import_module(f"services.{service}.unit_of_work")
    subscribers = importlib.import_module(f"services.{service}.subscribers")
    subscribers.register(broker, TOPOLOGY, unit_of_work.sql_unit_of_work(engine))

    subscribed = sorted(
        (sub.queue.name, sub.queue.routing(), sub.queue.arguments)
        for sub in broker.subscribers
        if isinstance(sub, RabbitSubscriber)
    )
    assert len(subscribed) == len(broker.subscribers)
    assert subscribed == sorted(
        (queue.name, queue.routing(), queue.arguments)
        for queue in consumer_queues(TOPOLOGY, service)
    )


def test_the_erp_adapter_consumes_only_the_dispatch_events_that_become_confirmations() -> None:
    assert [q.routing() for q in consumer_queues(TOPOLOGY, "erp_adapter")] == [
        "dispatch.shipped", "dispatch.corrected"]


@pytest.mark.parametrize("service", sorted(CONSUMER_QUEUES))
def test_every_services_broker_can_tell_its_queues_apart(service: str) -> None:
    make_broker("amqp://unused/", service=service, topology=TOPOLOGY, prefetch=1)


def test_a_policy_over_two_queues_that_share_a_routing_key_is_refused() -> None:
    queues = [TOPOLOGY.queue("svc", "all", "order.#"), TOPOLOGY.queue("svc", "one", "*.confirmed")]
    with pytest.raises(ValueError, match="can both receive one routing key"):
        DeliveryPolicy(TOPOLOGY, queues)


@pytest.mark.parametrize(
    ("binding_key", "routing_key", "routed"),
    [
        ("ext.*.order.submitted", "ext.mes.order.submitted", True),
        ("ext.*.order.submitted", "ext.order.submitted", False),
        ("order.*", "order.confirmed", True),
        ("order.*", "order.confirmed.late", False),
        ("dispatch.#", "dispatch", True),
        ("dispatch.#", "dispatch.exception.opened", True),
        ("dispatch.#", "dispatcher.created", False),
        ("a.#.z", "a.z", True),
        ("a.#.z", "a.b.c.z", True),
        ("a.#.z", "a.b.c", False),
        ("#", "anything.at.all", True),
    ],
)
def test_a_routing_key_matches_a_binding_key_as_a_topic_exchange_routes_it(
    binding_key: str, routing_key: str, routed: bool
) -> None:
    assert topic_matches(binding_key, routing_key) is routed


@pytest.mark.parametrize(
    ("first", "second", "overlap"),
    [
        ("dispatch.#", "order.*", False),
        ("erp.customer.upserted", "erp.product.upserted", False),
        ("order.confirmed", "order.*", True),
        ("a.*", "a.#", True),
        ("a.*", "a", False),
        ("a.#", "a", True),
        ("a.*", "*.b", True),
        ("a.#", "b.#", False),
        ("#.a", "a.#", True),
        ("*.*", "#.x.y.z", False),
        ("*.*.*", "#.x.y.z", True),
    ],
)
def test_two_binding_keys_overlap_when_some_routing_key_matches_both(
    first: str, second: str, overlap: bool
) -> None:
    assert bindings_overlap(first, second) is overlap
    assert bindings_overlap(second, first) is overlap
