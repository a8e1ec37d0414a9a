"""Message edges: contract → command → handler, nothing else."""

from __future__ import annotations

from faststream.rabbit import RabbitBroker

from services.dispatch.domain import OrderSnapshot
from services.dispatch.handlers import CancelForOrder, CreateDispatch, handle
from services.dispatch.unit_of_work import DispatchUnitOfWork
from shared.contracts.envelope import Envelope
from shared.contracts.order import OrderCancelled, OrderConfirmed
from shared.messaging.topology import Topology, consumer_queue

SERVICE = "dispatch"


def register(broker: RabbitBroker, topology: Topology, uow: DispatchUnitOfWork) -> None:
    """Subscribe the dispatch service's consumers, one quorum queue per purpose."""
    confirmed_queue = consumer_queue(topology, SERVICE, "order-confirmed")
    cancelled_queue = consumer_queue(topology, SERVICE, "order-cancelled")

    @broker.subscriber(confirmed_queue, topology.events, no_reply=True,
                       title="dispatch/order.confirmed")
    async def on_order_confirmed(event: Envelope[OrderConfirmed]) -> None:
        """An order was confirmed: open its one dispatch."""
        order = event.data
        await handle(CreateDispatch(
            event_id=str(event.event_id),
            consumer=confirmed_queue.name,
            correlation_id=event.correlation_id,
            order=OrderSnapshot(
                order_id=order.order_id,
                external_ref=order.external_ref,
                source=order.source,
                customer_id=order.customer_id,
                requested_ship_date=order.requested_ship_date,
                priority=order.priority,
                ship_to=order.ship_to.model_dump(mode="json"),
                lines=[line.model_dump(mode="json") for line in order.lines],
            ),
        ), uow)

    @broker.subscriber(cancelled_queue, topology.events, no_reply=True,
                       title="dispatch/order.cancelled")
    async def on_order_cancelled(event: Envelope[OrderCancelled]) -> None:
        """An order was cancelled: cancel its dispatch where the workflow lets the system."""
        await handle(CancelForOrder(
            event_id=str(event.event_id),
            consumer=cancelled_queue.name,
            correlation_id=event.correlation_id,
            order_id=event.data.order_id,
            reason=event.data.reason,
        ), uow)
