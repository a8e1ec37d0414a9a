"""Events the notification service owns (`notification.*`)."""

from __future__ import annotations

from pydantic import Field

from shared.contracts.envelope import Contract

NOTIFICATION_DELIVERED = "notification.delivered"
NOTIFICATION_FAILED = "notification.failed"


class NotificationOutcome(Contract):
    delivery_id: str = Field(min_length=1)
    event_id: str = Field(min_length=1, description="the event that caused the notification")
    event_type: str
    rule_id: str
    recipient: str = Field(description="user:<id> or system:<name>")
    channel: str = Field(description="email or webhook")
    attempts: int = Field(ge=1)


class NotificationDelivered(NotificationOutcome):
    """A mail was accepted by the SMTP server, or a webhook receiver answered 2xx."""


class NotificationFailed(NotificationOutcome):
    """Every attempt failed; the delivery stays visible (`GET /deliveries`) and ops can retry it."""

    last_error: str
