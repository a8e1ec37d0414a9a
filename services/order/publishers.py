"""The one place where order domain events become wire contracts (`order.*`)."""

from __future__ import annotations

from services.order.domain import (
    OrderCancelled,
    OrderConfirmed,
    OrderReceived,
    Status,
    SubmissionRejected,
)
from shared.contracts import order as contracts
from shared.contracts.envelope import Contract
from shared.domain import DomainEvent
from shared.uow import WireEvent


def to_wire(event: DomainEvent) -> WireEvent | None:
    """The `order.*` event a domain event publishes; None for those that stay inside."""
    if isinstance(event, OrderReceived):
        received = contracts.OrderReceived(
            order_id=event.order_id, version=event.version, external_ref=event.external_ref,
            source=event.source,
            # Always `received`: an order confirmed on arrival still announces both steps in order.
            status=Status.RECEIVED.value,
        )
        return WireEvent(contracts.ORDER_RECEIVED, received.model_dump(mode="json"))
    if isinstance(event, OrderConfirmed):
        confirmed = contracts.OrderConfirmed.model_validate({
            "order_id": event.order_id,
            "version": event.version,
            "external_ref": event.external_ref,
            "source": event.source,
            "customer_id": event.customer_id,
            "requested_ship_date": event.requested_ship_date,
            "priority": event.priority,
            "ship_to": event.ship_to,
            "lines": [{"line_no": x.line_no, "product_id": x.product_id, "quantity": x.quantity,
                       "uom": x.uom} for x in event.lines],
        })
        return WireEvent(contracts.ORDER_CONFIRMED, confirmed.model_dump(mode="json"))
    if isinstance(event, OrderCancelled):
        cancelled = contracts.OrderCancelled(
            order_id=event.order_id, version=event.version, external_ref=event.external_ref,
            source=event.source, reason=event.reason,
        )
        return WireEvent(contracts.ORDER_CANCELLED, cancelled.model_dump(mode="json"))
    if isinstance(event, SubmissionRejected):
        rejected = contracts.OrderRejected(external_ref=event.external_ref, source=event.source,
                                           reasons=event.reasons)
        return WireEvent(contracts.ORDER_REJECTED, rejected.model_dump(mode="json"))
    return None


# Events this service publishes, for the AsyncAPI catalogue (see main.py).
PUBLISHED: dict[str, type[Contract]] = {
    contracts.ORDER_RECEIVED: contracts.OrderReceived,
    contracts.ORDER_REJECTED: contracts.OrderRejected,
    contracts.ORDER_CONFIRMED: contracts.OrderConfirmed,
    contracts.ORDER_CANCELLED: contracts.OrderCancelled,
}
