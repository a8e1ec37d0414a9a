"""The one way a service builds its FastStream broker."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from faststream.middlewares import AckPolicy
from faststream.rabbit import Channel, RabbitBroker, RabbitQueue

from shared.messaging.delivery import DeliveryPolicy
from shared.messaging.provenance import DEVELOPMENT, ProvenancePolicy, Senders
from shared.messaging.topology import Topology, consumer_queues
from shared.messaging.tracing import TracingPolicy


def make_broker(
    amqp_url: str,
    *,
    service: str,
    topology: Topology,
    prefetch: int,
    queues: Sequence[RabbitQueue] | None = None,
    senders: Senders | None = DEVELOPMENT,
) -> RabbitBroker:
    """Broker with confirms, returns that raise, tracing, and Spine's ack/retry/dead-letter policy.

    `queues`: what its subscribers consume; by default the service's row of `CONSUMER_QUEUES`.
    `senders`: who may publish what (SPINE_BROKER_USERS); None only for plumbing tests whose
    routing keys belong to no Spine producer.
    """
    if queues is None:
        queues = consumer_queues(topology, service)
    return RabbitBroker(
        amqp_url,
        app_id=service,
        default_channel=Channel(
            prefetch_count=prefetch, publisher_confirms=True, on_return_raises=True
        ),
        # Tracing outermost, so the delivery decision (ack, retry, dead-letter) is in the span;
        # provenance inside delivery, so a refused message is dead-lettered like any other.
        middlewares=[TracingPolicy(service), DeliveryPolicy(topology, queues),
                     *([ProvenancePolicy(senders, topology)] if senders is not None else [])],
        ack_policy=AckPolicy.MANUAL,
        graceful_timeout=20.0,
        logger=logging.getLogger(f"spine.{service}.broker"),
        log_level=logging.DEBUG,
        description=f"Spine {service} service",
    )
