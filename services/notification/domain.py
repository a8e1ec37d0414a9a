"""What the notification service keeps of each event it observes. No I/O.

The service records each event once, with the aggregate it concerns, and its rules (data:
`services/notification/rules/`) decide who hears about it on which channel.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from string import Template
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


# ---------------------------------------------------------------------------- rules

# Who a rule may name: a role's holders, one user, or a person the event names.
EVENT_RECIPIENTS = {
    "owner": "owner",  # the exception's owner (a user id or role:<role>)
    "requester": "requested_by",  # who asked for an approval
}
CHANNELS = ("inbox",)


@dataclass(frozen=True)
class Rule:
    """On an event type, with conditions on its data, notify recipients on channels."""

    id: str
    on: str
    notify: tuple[str, ...]
    channels: tuple[str, ...]
    title: str
    body: str
    # field → a value it must equal, or {"in": [values]}.
    when: Mapping[str, Any] = field(default_factory=dict)

    def applies_to(self, event_type: str, data: Mapping[str, Any]) -> bool:
        if event_type != self.on:
            return False
        for name, expected in self.when.items():
            value = data.get(name)
            if isinstance(expected, Mapping):
                if value not in expected["in"]:
                    return False
            elif value != expected:
                return False
        return True

    def recipients(self, data: Mapping[str, Any]) -> list[str]:
        """`user:<id>` or `role:<role>` of each recipient the event resolves to, once each."""
        found: list[str] = []
        for name in self.notify:
            target = data.get(EVENT_RECIPIENTS[name]) if name in EVENT_RECIPIENTS else name
            if not isinstance(target, str) or not target:
                continue  # the event names nobody there: nobody to tell
            recipient = target if target.startswith(("role:", "user:")) else f"user:{target}"
            if recipient not in found:
                found.append(recipient)
        return found

    def render(self, data: Mapping[str, Any]) -> tuple[str, str]:
        """The title and body, with `$field` replaced by the event's data (unknown ones kept)."""
        values = {k: "" if v is None else str(v) for k, v in data.items()}
        return (Template(self.title).safe_substitute(values),
                Template(self.body).safe_substitute(values))


@dataclass(frozen=True)
class Notification:
    """One recipient to tell on one channel, because of one event and one rule."""

    event_id: uuid.UUID
    rule_id: str
    recipient: str
    channel: str
    title: str
    body: str


def notifications(rules: Sequence[Rule], event: ObservedEvent) -> list[Notification]:
    """Everyone the rules say must hear of `event`, each on each channel once."""
    found: dict[tuple[str, str], Notification] = {}
    for rule in rules:
        if not rule.applies_to(event.type, event.data):
            continue
        title, body = rule.render(event.data)
        for recipient in rule.recipients(event.data):
            for channel in rule.channels:
                # One event tells one recipient once per channel, whichever rules name them.
                found.setdefault((recipient, channel), Notification(
                    event.event_id, rule.id, recipient, channel, title, body))
    return list(found.values())


@dataclass(frozen=True, kw_only=True)
class NotificationsQueued(DomainEvent):
    """The rules named people to tell of an event (the delivery rows say who and how)."""

    event: ObservedEvent
    count: int

    def audit(self) -> AuditFact:
        return AuditFact(action="notification.queued", entity_type="event",
                         entity_id=str(self.event.event_id),
                         details={"type": self.event.type, "deliveries": self.count})
