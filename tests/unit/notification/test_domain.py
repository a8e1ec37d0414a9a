"""What the notification service keeps of an event (services/notification/domain.py)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from faststream.rabbit import RabbitBroker
from sqlalchemy.ext.asyncio import create_async_engine

from services.notification import subscribers
from services.notification.domain import AggregateRef, EventObserved, ObservedEvent, aggregate_of
from services.notification.unit_of_work import sql_unit_of_work
from shared.messaging.topology import CONSUMER_QUEUES, Topology


def test_a_dispatch_event_is_about_its_dispatch_not_its_order() -> None:
    data = {"dispatch_id": "d-1", "order_id": "o-1", "version": 3, "status": "packed"}
    assert aggregate_of("dispatch.packed", data) == AggregateRef("dispatch", "d-1", 3)


def test_a_dispatch_exception_event_belongs_to_the_dispatch() -> None:
    data = {"dispatch_id": "d-1", "order_id": "o-1", "version": 4, "exception_id": "x-9"}
    assert aggregate_of("dispatch.exception.opened", data) == AggregateRef("dispatch", "d-1", 4)


def test_an_order_event_is_about_its_order() -> None:
    assert aggregate_of("order.confirmed", {"order_id": "o-1", "version": 2}) == AggregateRef(
        "order", "o-1", 2
    )


def test_reference_data_names_its_record_by_the_second_part_of_the_type() -> None:
    data = {"product_id": "P-200", "name": "Bolt", "uom": "EA", "version": 5}
    assert aggregate_of("erp.product.upserted", data) == AggregateRef("product", "P-200", 5)


def test_an_event_whose_type_names_no_aggregate_borrows_one_without_its_version() -> None:
    data = {"order_id": "o-1", "reason_code": "MATERIAL", "version": 7}
    assert aggregate_of("ext.mes.production.exception", data) == AggregateRef("order", "o-1", None)


def test_a_rejected_order_without_an_id_has_no_aggregate() -> None:
    data = {"order_id": None, "external_ref": "MES-1", "reasons": ["unknown customer"]}
    assert aggregate_of("order.rejected", data) == AggregateRef(None, None, None)


def test_numeric_ids_are_kept_as_text_and_nonsense_versions_are_dropped() -> None:
    assert aggregate_of("order.received", {"order_id": 42, "version": True}) == AggregateRef(
        "order", "42", None
    )
    assert aggregate_of("order.received", {"order_id": True}) == AggregateRef(None, None, None)


def test_observing_an_event_writes_no_audit_row() -> None:
    event = ObservedEvent(
        event_id=uuid.uuid4(), type="order.confirmed", producer="order",
        occurred_at=datetime(2026, 11, 27, 10, tzinfo=UTC), correlation_id=uuid.uuid4(),
        causation_id=None, actor_id="order", actor_role="system",
        aggregate=AggregateRef("order", "o-1", 2), data={"order_id": "o-1", "version": 2},
    )
    assert EventObserved(observed=event).audit() is None


def test_the_service_consumes_exactly_the_queues_the_topology_table_lists() -> None:
    broker = RabbitBroker()
    topology = Topology("unit")
    engine = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")  # never used
    subscribers.register(broker, topology, sql_unit_of_work(engine))
    registered = sorted(
        (s.queue.name, s.queue.routing_key)  # type: ignore[attr-defined]
        for s in broker.subscribers
    )
    expected = sorted(
        (topology.queue_name("notification", purpose), key)
        for purpose, key in CONSUMER_QUEUES["notification"][:1]
    )
    # One queue; the subscriber binds its first key and the runtime the others at start.
    assert registered == expected
