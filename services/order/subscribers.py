"""Message edges: contract → command → handler, nothing else."""

from __future__ import annotations

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
from shared.contracts.envelope import Envelope, LooseEnvelope
from shared.contracts.erp import CustomerUpserted, ProductUpserted
from shared.contracts.ext import OrderSubmitted, source_of
from shared.messaging.delivery import PermanentError
from shared.messaging.topology import Topology, consumer_queue

SERVICE = "order"


def register(broker: RabbitBroker, topology: Topology, uow: OrderUnitOfWork) -> None:
    """Subscribe the order service's consumers, one quorum queue per purpose."""
    submitted_queue = consumer_queue(topology, SERVICE, "order-submitted")
    customer_queue = consumer_queue(topology, SERVICE, "customer-upserted")
    product_queue = consumer_queue(topology, SERVICE, "product-upserted")

    @broker.subscriber(submitted_queue, topology.events, title="order/ext.*.order.submitted")
    async def on_order_submitted(event: LooseEnvelope, message: RabbitMessage) -> None:
        """An outside system submitted an order: accept it, or answer why not."""
        routing_key = message.raw_message.routing_key or ""
        source = source_of(routing_key)
        if source is None:
            # Nobody could match an answer to it: the dead-letter queue is where ops will look.
            raise PermanentError(f"routing key {routing_key!r} names no valid outside system")
        await handle(submission(event, source, consumer=submitted_queue.name), uow)

    @broker.subscriber(customer_queue, topology.events, title="order/erp.customer.upserted")
    async def on_customer_upserted(event: Envelope[CustomerUpserted]) -> None:
        """The ERP changed a customer: keep the replica orders are checked against."""
        data = event.data
        await handle(ReplicateCustomer(
            event_id=event.event_id, consumer=customer_queue.name,
            correlation_id=event.correlation_id, actor=event.actor,
            customer_id=data.customer_id, name=data.name, active=data.active, version=data.version,
        ), uow)

    @broker.subscriber(product_queue, topology.events, title="order/erp.product.upserted")
    async def on_product_upserted(event: Envelope[ProductUpserted]) -> None:
        """The ERP changed a product: keep the replica orders are checked against."""
        data = event.data
        await handle(ReplicateProduct(
            event_id=event.event_id, consumer=product_queue.name,
            correlation_id=event.correlation_id, actor=event.actor,
            product_id=data.product_id, name=data.name, uom=data.uom, active=data.active,
            version=data.version,
        ), uow)


def submission(event: LooseEnvelope, source: str, *, consumer: str) -> SubmitOrder | RejectSubmission:
    """The command a submission's data makes: an order to take in, or a contract to answer."""
    data = event.data
    try:
        submitted = OrderSubmitted.model_validate(data)
    except ValidationError as exc:
        external_ref = data.get("external_ref")
        customer_ref, line_refs = references_in(data)
        return RejectSubmission(
            event_id=event.event_id, consumer=consumer, correlation_id=event.correlation_id,
            actor=event.actor, source=source, producer=event.producer,
            external_ref=external_ref if isinstance(external_ref, str) else None,
            problems=readable_reasons(exc.errors(include_url=False), data),
            customer_ref=customer_ref, line_refs=line_refs,
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
        actor=event.actor, source=source, producer=event.producer, draft=draft,
        confirm=submitted.confirmed,
    )
