"""What the notification service keeps of each event it observes. No I/O.

The notification rules (a later issue) decide who hears about what from these observations;
until then the service records each event once, with the aggregate it concerns, so that the
rules have a history to read and ops can see what went past.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.domain import Actor, AuditFact, DomainEvent
from shared.workflow import SYSTEM

# The notification service acting on its own: it consumes events, no person asks it to.
SYSTEM_ACTOR = Actor(id="notification", role=SYSTEM)

# The aggregates Spine's events name, in the order they are tried when the event type itself
# does not say (a dispatch event also carries its order_id; the dispatch is its aggregate).
AGGREGATES = ("dispatch", "order", "customer", "product", "notification")


@dataclass(frozen=True)
class AggregateRef:
    type: str | None
    id: str | None
    version: int | None


@dataclass(frozen=True)
class ObservedEvent:
    event_id: uuid.UUID
    type: str
    producer: str
    occurred_at: datetime
    correlation_id: uuid.UUID
    causation_id: uuid.UUID | None
    actor_id: str
    actor_role: str
    aggregate: AggregateRef
    data: Mapping[str, Any]


@dataclass(frozen=True, kw_only=True)
class EventObserved(DomainEvent):
    """An event was kept for the first time: what the notification rules will start from."""

    observed: ObservedEvent

    def audit(self) -> AuditFact | None:
        # Keeping a copy changes nothing of anyone's business; the service writes no audit row.
        return None


def aggregate_of(event_type: str, data: Mapping[str, Any]) -> AggregateRef:
    """The aggregate an event is about: named by its type (`dispatch.packed` → dispatch_id)."""
    named = [part for part in event_type.split(".") if part in AGGREGATES]
    for kind in [*named, *AGGREGATES]:
        value = data.get(f"{kind}_id")
        # bool is an int in Python, but never an id.
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            # `version` is the version of the event's own aggregate only.
            version = _version(data.get("version")) if kind in named else None
            return AggregateRef(kind, str(value), version)
    return AggregateRef(None, None, None)


def _version(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    return None
