"""Domain events and the aggregates that record them. Standard library only.

An aggregate changes itself and appends what happened to `events`; the unit of work collects
the events of every aggregate it handed out and writes, in the same transaction, one audit row
per event (from `DomainEvent.audit`) and one outbox row per event that has a wire contract
(from the service's `publishers.py`). Handlers never write audit or outbox rows themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The roles a person's token may carry (DESIGN.md, Roles); services and outside systems act
# as the role `system` (`shared.workflow.SYSTEM`), which no person holds.
ROLES = ("sales", "planner", "warehouse", "shipping", "supervisor", "integration", "ops")


@dataclass(frozen=True)
class Actor:
    """Who did it, in which role (the audit row's and the envelope's actor)."""

    id: str
    role: str


@dataclass(frozen=True)
class AuditFact:
    """One row of the append-only operation log."""

    action: str
    entity_type: str
    entity_id: str
    from_state: str | None = None
    to_state: str | None = None
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


class DomainEvent:
    """Something that happened, in the domain's words. Subclasses are frozen dataclasses."""

    # Who caused it, when not the unit of work's actor (e.g. the person deciding inside a
    # message handler). None: the transaction's actor.
    actor: Any = None

    def audit(self) -> AuditFact | None:
        """The operation-log row this event writes (None: it changes nothing worth a row)."""
        raise NotImplementedError(type(self).__name__)


@dataclass
class Aggregate:
    """Base of entities that record their own domain events (not compared, not shown)."""

    events: list[DomainEvent] = field(default_factory=list, init=False, repr=False, compare=False)

    def record(self, event: DomainEvent) -> None:
        self.events.append(event)

    def pull_events(self) -> list[DomainEvent]:
        events, self.events = self.events, []
        return events
