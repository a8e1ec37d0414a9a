"""The one place where order state becomes wire contracts (`order.*`)."""

from __future__ import annotations

from typing import Any

from services.order.domain import Order, Status
from shared.contracts.envelope import Contract
from shared.contracts.order import (
    ORDER_CANCELLED,
    ORDER_CONFIRMED,
    ORDER_RECEIVED,
    ORDER_REJECTED,
    OrderCancelled,
    OrderConfirmed,
    OrderReceived,
    OrderRejected,
)

Event = tuple[str, dict[str, Any]]


def order_received(order: Order, *, version: int) -> Event:
    data = OrderReceived(
        order_id=str(order.id),
        version=version,
        external_ref=order.external_ref,
        source=order.source,
        # Always `received`: an order confirmed on arrival still announces both steps in order.
        status=Status.RECEIVED.value,
    )
    return ORDER_RECEIVED, data.model_dump(mode="json")


def order_confirmed(order: Order, *, version: int) -> Event:
    """Carries the whole snapshot: the dispatch service never asks the order service back."""
    data = OrderConfirmed.model_validate(
        {
            "order_id": str(order.id),
            "version": version,
            "external_ref": order.external_ref,
            "source": order.source,
            "customer_id": order.customer_id,
            "requested_ship_date": order.requested_ship_date,
            "priority": order.priority,
            "ship_to": order.ship_to,
            "lines": [
                {"line_no": x.line_no, "product_id": x.product_id, "quantity": x.quantity,
                 "uom": x.uom}
                for x in order.lines
            ],
        }
    )
    return ORDER_CONFIRMED, data.model_dump(mode="json")


def order_cancelled(order: Order, *, version: int, reason: str) -> Event:
    data = OrderCancelled(
        order_id=str(order.id),
        version=version,
        external_ref=order.external_ref,
        source=order.source,
        reason=reason,
    )
    return ORDER_CANCELLED, data.model_dump(mode="json")


def order_rejected(*, external_ref: str | None, source: str | None, reasons: list[str]) -> Event:
    data = OrderRejected(external_ref=external_ref, source=source, reasons=reasons)
    return ORDER_REJECTED, data.model_dump(mode="json")


# Events this service publishes, for the AsyncAPI catalogue (see main.py).
PUBLISHED: dict[str, type[Contract]] = {
    ORDER_RECEIVED: OrderReceived,
    ORDER_REJECTED: OrderRejected,
    ORDER_CONFIRMED: OrderConfirmed,
    ORDER_CANCELLED: OrderCancelled,
}
