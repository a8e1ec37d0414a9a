"""Message edges: contract → command → handler, nothing else."""

from __future__ import annotations

from collections.abc import Sequence

from faststream.rabbit import RabbitBroker, RabbitQueue

from services.notification.domain import ObservedEvent, Render, Rule, aggregate_of
from services.notification.handlers import RecordEvent, handle
from services.notification.unit_of_work import NotificationUnitOfWork
from shared.contracts.envelope import LooseEnvelope
from shared.messaging.topology import Topology, binding_keys

SERVICE = "notification"
PURPOSE = "events"


def events_queue(topology: Topology, keys: Sequence[str]) -> RabbitQueue:
    """The service's one quorum queue, bound (by the subscriber) to the first of `keys`; the
    runtime binds the rest at start (`Runtime.bindings`)."""
    return topology.queue(SERVICE, PURPOSE, keys[0])


def register(broker: RabbitBroker, topology: Topology, uow: NotificationUnitOfWork,
             rules: Sequence[Rule] = (), render: Render | None = None,
             keys: Sequence[str] | None = None) -> None:
    """Subscribe the notification service's consumer: the events its rules are keyed on
    (`keys`; by default those of the default rules, as the registry lists them)."""
    kept = tuple(rules)
    queue = events_queue(topology, keys or binding_keys(SERVICE, PURPOSE))

    # Loose envelopes: a payload this service does not understand yet is still worth keeping;
    # a broken envelope is dead-lettered with its reason.
    @broker.subscriber(queue, topology.events, no_reply=True, title="notification/events")
    async def on_event(event: LooseEnvelope) -> None:
        """An event a rule is keyed on: keep it, and queue whom the rules name."""
        await handle(_command(event, queue.name, kept, render), uow)


def _command(event: LooseEnvelope, consumer: str, rules: tuple[Rule, ...],
             render: Render | None) -> RecordEvent:
    extra = {"render": render} if render is not None else {}
    return RecordEvent(
        consumer=consumer, rules=rules, **extra,
        event=ObservedEvent(
            event_id=event.event_id,
            type=event.type,
            producer=event.producer,
            occurred_at=event.occurred_at,
            correlation_id=event.correlation_id,
            causation_id=event.causation_id,
            actor_id=event.actor.id,
            actor_role=event.actor.role,
            aggregate=aggregate_of(event.type, event.data),
            data=event.data,
        ),
    )
