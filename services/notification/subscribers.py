"""Message edges: contract → command → handler, nothing else."""

from __future__ import annotations

from collections.abc import Sequence

from faststream.rabbit import RabbitBroker

from services.notification.domain import ObservedEvent, Rule, aggregate_of
from services.notification.handlers import RecordEvent, handle
from services.notification.unit_of_work import NotificationUnitOfWork
from shared.contracts.envelope import LooseEnvelope
from shared.messaging.topology import Topology, consumer_queue

SERVICE = "notification"


def register(broker: RabbitBroker, topology: Topology, uow: NotificationUnitOfWork,
             rules: Sequence[Rule] = ()) -> None:
    """Subscribe the notification service's consumers, one quorum queue per purpose."""
    kept = tuple(rules)
    # Only dispatch events (the registry's table): the rules are keyed on the dispatch
    # workflow, and each binding costs a consume and a transaction per order. What nobody
    # binds goes to the unrouted queue, so no binding here exists just to make events routable.
    dispatch_queue = consumer_queue(topology, SERVICE, "events")

    # Loose envelopes: a payload this service does not understand yet is still worth keeping;
    # a broken envelope is dead-lettered with its reason.
    @broker.subscriber(dispatch_queue, topology.events, no_reply=True,
                       title="notification/dispatch.#")
    async def on_dispatch_event(event: LooseEnvelope) -> None:
        """A dispatch was created, moved, held or corrected: keep the event for the rules."""
        await handle(_command(event, dispatch_queue.name, kept), uow)


def _command(event: LooseEnvelope, consumer: str, rules: tuple[Rule, ...] = ()) -> RecordEvent:
    return RecordEvent(
        consumer=consumer, rules=rules,
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
