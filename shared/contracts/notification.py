"""Events the notification service owns (`notification.*`)."""

from __future__ import annotations

from shared.contracts.envelope import Contract

NOTIFICATION_DELIVERED = "notification.delivered"
NOTIFICATION_FAILED = "notification.failed"


class NotificationOutcome(Contract):
    notification_id: str
    rule: str
    recipient: str
    source_event_id: str
    detail: str = ""
