"""The one place where notification domain events become wire contracts (`notification.*`)."""

from __future__ import annotations

from shared.domain import DomainEvent
from shared.uow import WireEvent


def to_wire(event: DomainEvent) -> WireEvent | None:
    """The `notification.*` event a domain event publishes; None for those that stay inside."""
    # Observing an event tells no one anything: `notification.delivered|failed` will come from
    # deliveries, which the notification rules (a later issue) make.
    return None
