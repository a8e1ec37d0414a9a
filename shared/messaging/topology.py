"""Names and arguments of every exchange and queue: the one place the topology is described."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import aio_pika
from faststream.rabbit import ExchangeType, QueueType, RabbitExchange, RabbitQueue

from shared.registry import SERVICES

ERROR_HEADER = "x-spine-error"
QUEUE_HEADER = "x-spine-queue"
ROUTING_KEY_HEADER = "x-spine-routing-key"
DEAD_LETTERED_AT_HEADER = "x-spine-dead-lettered-at"

# The queues' x-delivery-limit: deliveries that no consumer settled (it died or lost its
# connection; consumers never requeue) before the broker dead-letters the message itself.
# High, because every crash and broker restart counts against it; low enough that a message
# that kills its consumer stops doing so.
DEFAULT_DELIVERY_LIMIT = 20


@dataclass(frozen=True)
class Topology:
    """`{namespace}.events` (topic), `{namespace}.dlx` (direct), and per-purpose quorum queues.

    `{namespace}.events` has an alternate exchange, `{namespace}.unrouted` (fanout), leading to a
    kept quorum queue of the same name: an event no queue binds is neither an error nor lost.
    """

    namespace: str = "spine"
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT
    # False where the services' broker users have no configure rights (production): they then
    # only check, passively, that `spine topology declare` made what they use, and bind to it.
    declare: bool = True

    @property
    def events(self) -> RabbitExchange:
        # The alternate exchange is an argument, so every declare of the exchange must carry it
        # (RabbitMQ refuses a redeclare whose arguments differ): declare it only through this.
        return RabbitExchange(f"{self.namespace}.events", type=ExchangeType.TOPIC, durable=True,
                              declare=self.declare, arguments=self.events_arguments)

    @property
    def events_arguments(self) -> dict[str, Any]:
        """The events exchange's declaration arguments: its alternate exchange."""
        return {"alternate-exchange": self.unrouted.name}

    @property
    def unrouted(self) -> RabbitExchange:
        """Where `events` sends what no binding matches (a fanout to the unrouted queue)."""
        return RabbitExchange(f"{self.namespace}.unrouted", type=ExchangeType.FANOUT,
                              durable=True, declare=self.declare)

    @property
    def unrouted_queue(self) -> RabbitQueue:
        """Every event no queue was bound for, kept until ops reads or purges it."""
        return RabbitQueue(f"{self.namespace}.unrouted", queue_type=QueueType.QUORUM,
                           durable=True, declare=self.declare)

    @property
    def dead_letters(self) -> RabbitExchange:
        return RabbitExchange(f"{self.namespace}.dlx", type=ExchangeType.DIRECT, durable=True,
                              declare=self.declare)

    def queue_name(self, service: str, purpose: str) -> str:
        return f"{self.namespace}.{service}.{purpose}"

    def queue(self, service: str, purpose: str, routing_key: str) -> RabbitQueue:
        """A consuming service's quorum queue for one purpose, dead-lettering to its own DLQ."""
        name = self.queue_name(service, purpose)
        return RabbitQueue(
            name,
            queue_type=QueueType.QUORUM,
            durable=True,
            routing_key=routing_key,
            declare=self.declare,
            arguments={
                "x-dead-letter-exchange": self.dead_letters.name,
                "x-dead-letter-routing-key": name,
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
                "x-delivery-limit": self.delivery_limit,
            },
        )

    def dead_letter_queue(self, queue_name: str) -> RabbitQueue:
        return RabbitQueue(
            f"{queue_name}.dlq",
            queue_type=QueueType.QUORUM,
            durable=True,
            routing_key=queue_name,
            declare=self.declare,
        )


# Every consuming queue, by service: (purpose, binding key), as the registry declares them.
# Services subscribe from this table and the `spine dlq` commands derive queue names from it,
# because without the management plugin there is no way to ask the broker which queues exist.
CONSUMER_QUEUES: dict[str, list[tuple[str, str]]] = {
    service.name: list(service.consumer_queues) for service in SERVICES if service.consumer_queues
}


def known_queues(namespace: str = "spine") -> list[str]:
    """Names of every consuming queue in `namespace` (their dead-letter queues add `.dlq`)."""
    topology = Topology(namespace)
    return [
        topology.queue_name(service, purpose)
        for service, queues in CONSUMER_QUEUES.items()
        for purpose in dict(queues)
    ]


def binding_keys(service: str, purpose: str) -> tuple[str, ...]:
    """Every binding key of one consumer queue, as CONSUMER_QUEUES lists them."""
    return tuple(key for p, key in CONSUMER_QUEUES.get(service, []) if p == purpose)


def consumer_queue(topology: Topology, service: str, purpose: str) -> RabbitQueue:
    """The quorum queue of `service` for `purpose`, with its first binding key (the rest are
    bound by `declare_all` and by the service at start: `Runtime.bind_queues`)."""
    return topology.queue(service, purpose, binding_keys(service, purpose)[0])


def consumer_queues(topology: Topology, service: str) -> list[RabbitQueue]:
    """Every quorum queue `service` consumes (none for a service that only publishes)."""
    return [consumer_queue(topology, service, purpose)
            for purpose in dict(CONSUMER_QUEUES.get(service, []))]


def topic_matches(binding_key: str, routing_key: str) -> bool:
    """Whether a topic exchange routes `routing_key` along a binding with `binding_key`."""
    return _words_match(binding_key.split("."), routing_key.split("."))


def bindings_overlap(first: str, second: str) -> bool:
    """Whether some routing key would match both binding keys."""
    return _patterns_overlap(first.split("."), second.split("."))


def _words_match(pattern: list[str], words: list[str]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":  # zero or more words
        return any(_words_match(rest, words[i:]) for i in range(len(words) + 1))
    return bool(words) and head in ("*", words[0]) and _words_match(rest, words[1:])


def _patterns_overlap(a: list[str], b: list[str]) -> bool:
    if not a or not b:
        return all(word == "#" for word in a + b)
    if a[0] == "#":  # it stands for no word, or swallows b's first one and may go on
        return _patterns_overlap(a[1:], b) or _patterns_overlap(a, b[1:])
    if b[0] == "#":
        return _patterns_overlap(b, a)
    return ("*" in (a[0], b[0]) or a[0] == b[0]) and _patterns_overlap(a[1:], b[1:])


async def declare_all(channel: Any, topology: Topology) -> list[str]:
    """Declare the exchanges, the unrouted queue and every consumer queue with its bindings and DLQ.

    Run before any service starts (`make run`, the e2e tests), so that no event published
    early reaches only some of its consumers: the alternate exchange would keep it, but in the
    unrouted queue, not in the queue of the consumer that was not there yet.
    Returns the names of the queues declared.
    """
    kept = await declare_unrouted(channel, topology)
    events = await channel.declare_exchange(
        topology.events.name, aio_pika.ExchangeType.TOPIC, durable=True,
        arguments=topology.events_arguments,
    )
    dlx = await channel.declare_exchange(
        topology.dead_letters.name, aio_pika.ExchangeType.DIRECT, durable=True
    )
    declared = [kept]
    for service, queues in CONSUMER_QUEUES.items():
        for purpose in dict(queues):
            spec = consumer_queue(topology, service, purpose)
            queue = await channel.declare_queue(spec.name, durable=True, arguments=spec.arguments)
            for key in binding_keys(service, purpose):
                await queue.bind(events, routing_key=key)
            dead = topology.dead_letter_queue(spec.name)
            dlq = await channel.declare_queue(dead.name, durable=True, arguments=dead.arguments)
            await dlq.bind(dlx, routing_key=dead.routing())
            declared += [spec.name, dead.name]
    return declared


async def declare_unrouted(channel: Any, topology: Topology) -> str:
    """The events exchange's alternate exchange and the queue it keeps; returns the queue's name."""
    unrouted = await channel.declare_exchange(
        topology.unrouted.name, aio_pika.ExchangeType.FANOUT, durable=True
    )
    kept = await channel.declare_queue(
        topology.unrouted_queue.name, durable=True, arguments=topology.unrouted_queue.arguments
    )
    await kept.bind(unrouted)
    return str(kept.name)


def namespace_objects(namespace: str) -> tuple[list[str], list[str]]:
    """Every queue (with its DLQ, and the unrouted queue) and exchange a namespace declares."""
    topology = Topology(namespace)
    queues = [q for name in known_queues(namespace) for q in (name, f"{name}.dlq")]
    return ([*queues, topology.unrouted_queue.name],
            [topology.events.name, topology.dead_letters.name, topology.unrouted.name])


async def delete_broker_objects(
    amqp_url: str, queues: list[str], exchanges: list[str]
) -> list[str]:
    """Delete queues, then exchanges; a fresh channel each, since a refused delete closes it."""
    failures: list[str] = []
    try:
        conn = await aio_pika.connect(amqp_url, timeout=10)
    except Exception as exc:
        return [f"RabbitMQ: {exc}"]
    try:
        for kind, names in (("queue", queues), ("exchange", exchanges)):
            for name in names:
                channel = await conn.channel()
                try:
                    if kind == "queue":
                        await channel.queue_delete(name)
                    else:
                        await channel.exchange_delete(name)
                except Exception as exc:
                    failures.append(f"{kind} {name}: {exc}")
                finally:
                    with contextlib.suppress(Exception):
                        await channel.close()
    finally:
        await conn.close()
    return failures
