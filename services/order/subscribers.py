"""Message edges: contract → command → handler, nothing else."""

from __future__ import annotations

import contextlib
from typing import Any

import aio_pika
from faststream.rabbit import RabbitBroker
from faststream.rabbit.annotations import RabbitMessage
from pydantic import ValidationError

from services.order.contract_errors import readable_reasons, references_in
from services.order.domain import OrderDraft, OrderLine
from services.order.handlers import (
    RejectSubmission,
    ReplicateCustomer,
    ReplicateProduct,
    SubmitOrder,
    handle,
)
from services.order.unit_of_work import OrderUnitOfWork
from shared.contracts.envelope import Envelope, ExternalEnvelope
from shared.contracts.erp import CustomerUpserted, ProductUpserted
from shared.contracts.ext import OrderSubmitted, source_of
from shared.domain import Actor
from shared.messaging.broker import delivery_policy
from shared.messaging.delivery import Answered, PermanentError, event_routing_key, refused_ids
from shared.messaging.topology import Topology, consumer_queue
from shared.ratelimit import RateLimiter
from shared.uow import Duplicate, InboxConflict
from shared.workflow import SYSTEM

SERVICE = "order"


def register(broker: RabbitBroker, topology: Topology, uow: OrderUnitOfWork, *,
             intake_limits: RateLimiter | None = None) -> None:
    """Subscribe the order service's consumers, one quorum queue per purpose.

    `intake_limits`: how fast each outside system may submit (SPINE_INTAKE_RATE_LIMITS); a
    submission over it is refused before its handler, answered and dead-lettered like any.
    """
    submitted_queue = consumer_queue(topology, SERVICE, "order-submitted")
    customer_queue = consumer_queue(topology, SERVICE, "customer-upserted")
    product_queue = consumer_queue(topology, SERVICE, "product-upserted")

    @broker.subscriber(submitted_queue, topology.events, no_reply=True,
                       title="order/ext.*.order.submitted")
    async def on_order_submitted(event: ExternalEnvelope, message: RabbitMessage) -> None:
        """An outside system submitted an order: accept it, or answer why not."""
        routing_key = event_routing_key(message.raw_message)
        source = source_of(routing_key)
        if source is None:
            # Nobody could match an answer to it: the dead-letter queue is where ops will look.
            raise PermanentError(f"routing key {routing_key!r} names no valid outside system")
        command = submission(event, source, consumer=submitted_queue.name,
                             reply_to=message.raw_message.reply_to)
        if isinstance(command, SubmitOrder):
            await handle(command, uow)
            return
        # A submission that breaks its contract is malformed: answered, and dead-lettered too
        # (also when a redelivery finds the answer committed already).
        with contextlib.suppress(Duplicate):
            await handle(command, uow)
        raise Answered("contract violation: " + "; ".join(command.problems))

    async def answer_refused(raw: aio_pika.abc.AbstractIncomingMessage, body: Any,
                             reason: str) -> None:
        """A submission refused before it could be read is answered too, then dead-lettered."""
        command = refusal(raw, body, reason, consumer=f"{submitted_queue.name}.refused")
        if command is not None:
            # Answered at an earlier delivery: it is dead-lettered again all the same.
            with contextlib.suppress(Duplicate, InboxConflict):
                await handle(command, uow)

    delivery_policy(broker).answer_on(submitted_queue.name, answer_refused)
    if intake_limits is not None:
        delivery_policy(broker).limit_on(submitted_queue.name, intake_limits)

    @broker.subscriber(customer_queue, topology.events, no_reply=True,
                       title="order/erp.customer.upserted")
    async def on_customer_upserted(event: Envelope[CustomerUpserted]) -> None:
        """The ERP changed a customer: keep the replica orders are checked against."""
        data = event.data
        await handle(ReplicateCustomer(
            event_id=event.event_id, consumer=customer_queue.name,
            correlation_id=event.correlation_id, actor=event.actor,
            customer_id=data.customer_id, name=data.name, active=data.active, version=data.version,
        ), uow)

    @broker.subscriber(product_queue, topology.events, no_reply=True,
                       title="order/erp.product.upserted")
    async def on_product_upserted(event: Envelope[ProductUpserted]) -> None:
        """The ERP changed a product: keep the replica orders are checked against."""
        data = event.data
        await handle(ReplicateProduct(
            event_id=event.event_id, consumer=product_queue.name,
            correlation_id=event.correlation_id, actor=event.actor,
            product_id=data.product_id, name=data.name, uom=data.uom, active=data.active,
            version=data.version,
        ), uow)


def system_actor(source: str) -> Actor:
    """Who acts for a machine sender that named no actor: the system itself."""
    return Actor(id=source, role=SYSTEM)


def refusal(raw: aio_pika.abc.AbstractIncomingMessage, body: Any, reason: str, *,
            consumer: str) -> RejectSubmission | None:
    """The answer to a submission refused before its data was read; None if none can be sent.

    Whatever the envelope still says is used (its ids, the order's `external_ref`); the
    answer's inbox key is the envelope's `event_id`, else the AMQP `message_id`, else the
    body's digest, so that a redelivery is answered once.
    """
    source = source_of(event_routing_key(raw))
    if source is None:
        return None
    envelope = body if isinstance(body, dict) else {}
    data = envelope.get("data")
    external_ref = data.get("external_ref") if isinstance(data, dict) else None
    producer = envelope.get("producer")
    event_id, correlation_id = refused_ids(raw, body)
    return RejectSubmission(
        event_id=event_id, consumer=consumer, correlation_id=correlation_id,
        actor=system_actor(source), source=source,
        producer=producer if isinstance(producer, str) else source,
        external_ref=external_ref if isinstance(external_ref, str) else None,
        problems=[reason], reply_to=raw.reply_to or None,
    )



def submission(event: ExternalEnvelope, source: str, *, consumer: str,
               reply_to: str | None = None) -> SubmitOrder | RejectSubmission:
    """The command a submission's data makes: an order to take in, or a contract to answer."""
    data = event.data
    actor = event.actor or system_actor(source)
    try:
        submitted = OrderSubmitted.model_validate(data)
    except ValidationError as exc:
        external_ref = data.get("external_ref")
        customer_ref, line_refs = references_in(data)
        return RejectSubmission(
            event_id=event.event_id, consumer=consumer, correlation_id=event.correlation_id,
            actor=actor, source=source, producer=event.producer,
            external_ref=external_ref if isinstance(external_ref, str) else None,
            problems=readable_reasons(exc.errors(include_url=False), data),
            customer_ref=customer_ref, line_refs=line_refs, reply_to=reply_to or None,
        )
    draft = OrderDraft(
        customer_id=submitted.customer_id,
        requested_ship_date=submitted.requested_ship_date,
        priority=submitted.priority,
        ship_to=submitted.ship_to.model_dump(),
        lines=[OrderLine(x.line_no, x.product_id, x.quantity, x.uom) for x in submitted.lines],
        external_ref=submitted.external_ref,
        source=source,
    )
    return SubmitOrder(
        event_id=event.event_id, consumer=consumer, correlation_id=event.correlation_id,
        actor=actor, source=source, producer=event.producer, draft=draft,
        confirm=submitted.confirmed, reply_to=reply_to or None,
    )
