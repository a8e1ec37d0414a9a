"""Events the order service owns (`order.*`)."""

from __future__ import annotations

from datetime import date

from pydantic import Field

from shared.contracts.envelope import Contract
from shared.contracts.ext import OrderLine, ShipTo

ORDER_RECEIVED = "order.received"
ORDER_REJECTED = "order.rejected"
ORDER_CONFIRMED = "order.confirmed"
ORDER_CANCELLED = "order.cancelled"


class OrderEvent(Contract):
    order_id: str = Field(min_length=1)
    version: int = Field(ge=1, description="order aggregate version; consumers ignore stale ones")
    external_ref: str | None = None
    source: str | None = None


class OrderReceived(OrderEvent):
    status: str


class OrderRejected(Contract):
    """No order exists for a rejected submission, so it carries the caller's reference only."""

    external_ref: str | None = None
    source: str | None = None
    order_id: str | None = None
    reasons: list[str] = Field(min_length=1)


class OrderConfirmed(OrderEvent):
    """Carries the order snapshot the dispatch service works from."""

    customer_id: str
    requested_ship_date: date
    priority: str
    ship_to: ShipTo
    lines: list[OrderLine]


class OrderCancelled(OrderEvent):
    reason: str = ""
