"""The one way a service builds its FastStream broker."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from faststream.middlewares import AckPolicy
from faststream.rabbit import Channel, RabbitBroker, RabbitQueue

from shared.messaging.delivery import DeliveryPolicy
from shared.messaging.provenance import DEVELOPMENT, Senders
from shared.messaging.topology import Topology, binding_keys, consumer_queues
from shared.messaging.tracing import TracingPolicy


def make_broker(
    amqp_url: str,
    *,
    service: str,
    topology: Topology,
    prefetch: int,
    queues: Sequence[RabbitQueue] | None = None,
    senders: Senders | None = DEVELOPMENT,
    retry_limit: int = 5,
    max_message_bytes: int = 1024 * 1024,
    hold_max_s: float = 2.0,
) -> RabbitBroker:
    """Broker with confirms, returns that raise, tracing, and Spine's ack/retry/dead-letter policy.

    `queues`: what its subscribers consume; by default the service's row of `CONSUMER_QUEUES`.
    `senders`: who may publish what (SPINE_BROKER_USERS); None only for plumbing tests whose
    routing keys belong to no Spine producer. `retry_limit`, `max_message_bytes` and
    `hold_max_s`: see `DeliveryPolicy`, which `delivery_policy(broker)` returns.
    """
    if queues is None:
        queues = consumer_queues(topology, service)
    delivery = DeliveryPolicy(topology, queues, senders=senders, retry_limit=retry_limit,
                              max_message_bytes=max_message_bytes, hold_max_s=hold_max_s)
    for queue in queues:  # a queue bound to several keys (the notification service's)
        purpose = queue.name.removeprefix(f"{topology.namespace}.{service}.")
        delivery.add_bindings(queue.name, binding_keys(service, purpose))
    broker = RabbitBroker(
        amqp_url,
        app_id=service,
        default_channel=Channel(
            prefetch_count=prefetch, publisher_confirms=True, on_return_raises=True
        ),
        # Tracing outermost, so the delivery decision (ack, hold, dead-letter) is in the span.
        middlewares=[TracingPolicy(service), delivery],
        ack_policy=AckPolicy.MANUAL,
        graceful_timeout=20.0,
        logger=logging.getLogger(f"spine.{service}.broker"),
        log_level=logging.DEBUG,
        description=f"Spine {service} service",
    )
    broker.context.set_global(_DELIVERY, delivery)
    return broker


_DELIVERY = "spine_delivery_policy"


def delivery_policy(broker: RabbitBroker) -> DeliveryPolicy:
    """The delivery policy `make_broker` gave `broker` (subscribers register answers on it)."""
    policy = broker.context.get(_DELIVERY)
    if not isinstance(policy, DeliveryPolicy):
        raise TypeError("this broker was not built by make_broker")
    return policy
