"""The one place where notification domain events become wire contracts (`notification.*`)."""

from __future__ import annotations

from typing import Any

from services.notification.domain import SENT, DeliveryOutcome
from shared.contracts.notification import (
    NOTIFICATION_DELIVERED,
    NOTIFICATION_FAILED,
    NotificationDelivered,
    NotificationFailed,
)
from shared.domain import DomainEvent
from shared.uow import WireEvent

# Events this service publishes, for the AsyncAPI catalogue (see main.py).
PUBLISHED: dict[str, type[Any]] = {
    NOTIFICATION_DELIVERED: NotificationDelivered,
    NOTIFICATION_FAILED: NotificationFailed,
}


def to_wire(event: DomainEvent) -> WireEvent | None:
    """The `notification.*` event a domain event publishes; None for those that stay inside."""
    # An inbox entry is delivered by the commit that writes it: no event for it (it would
    # double the service's traffic for what `GET /deliveries` already shows).
    if not isinstance(event, DeliveryOutcome):
        return None
    d = event.delivery
    data: dict[str, Any] = {
        "delivery_id": str(d.id), "event_id": str(d.event_id), "event_type": d.event_type,
        "rule_id": d.rule_id, "recipient": d.recipient, "channel": d.channel,
        "attempts": d.attempts}
    if event.status == SENT:
        return WireEvent(NOTIFICATION_DELIVERED, NotificationDelivered(**data).model_dump())
    data["last_error"] = event.error or "unknown"
    return WireEvent(NOTIFICATION_FAILED, NotificationFailed(**data).model_dump())
