"""What the services recorded about order journeys, read from their databases and queues.

The crash-point and shutdown tests use it to prove "exactly one effect": one order per
submission, one dispatch per order, each audit row once, every outbox row sent, every event in
each consuming queue's inbox exactly once, and no dead letters.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import asyncpg

from shared.messaging.topology import CONSUMER_QUEUES, Topology, known_queues, topic_matches
from tests.e2e.conftest import Stack


@dataclass
class Journey:
    """What one order journey left behind, in every service."""

    orders: list[dict[str, Any]] = field(default_factory=list)
    order_audit: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    dispatches: list[dict[str, Any]] = field(default_factory=list)
    dispatch_audit: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    # Routing key → how many outbox rows the journey's producers wrote with it.
    published: Counter[str] = field(default_factory=Counter)
    # Event type → how many the notification service observed.
    observed: Counter[str] = field(default_factory=Counter)
    # (event type, consumer queue) → inbox rows; the expected ones are 1, the rest absent.
    inbox: Counter[tuple[str, str]] = field(default_factory=Counter)
    expected_inbox: Counter[tuple[str, str]] = field(default_factory=Counter)


async def _fetch(stack: Stack, service: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(stack.dsn(service))
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


def notification_observes(routing_key: str) -> bool:
    """Whether the notification service's queue is bound to `routing_key` (its rules name it)."""
    return any(topic_matches(key, routing_key) for _, key in CONSUMER_QUEUES["notification"])


def _consumers_of(namespace: str, routing_key: str) -> list[str]:
    """The consuming queues the events exchange routes `routing_key` to."""
    topology = Topology(namespace)
    return [topology.queue_name(service, purpose)
            for service, queues in CONSUMER_QUEUES.items()
            for purpose, binding in queues if topic_matches(binding, routing_key)]


async def journey(stack: Stack, correlation_id: str) -> Journey:
    """Everything recorded under one correlation id (one order journey)."""
    found = Journey()
    orders = await _fetch(stack, "order", "SELECT id, status, version FROM customer_order "
                          "WHERE correlation_id = $1", correlation_id)
    found.orders = [dict(r) for r in orders]
    for order in orders:
        found.order_audit += [tuple(r) for r in await _fetch(
            stack, "order", "SELECT action, from_state, to_state FROM audit_log "
            "WHERE entity_type = 'order' AND entity_id = $1 ORDER BY id", str(order["id"]))]
        dispatches = await _fetch(stack, "dispatch", "SELECT id, status, version FROM dispatch "
                                  "WHERE order_id = $1", str(order["id"]))
        found.dispatches += [dict(r) for r in dispatches]
        for dispatch in dispatches:
            found.dispatch_audit += [tuple(r) for r in await _fetch(
                stack, "dispatch", "SELECT action, from_state, to_state FROM audit_log "
                "WHERE entity_type = 'dispatch' AND entity_id = $1 ORDER BY id",
                str(dispatch["id"]))]
    events: list[tuple[str, str]] = []
    for service in ("order", "dispatch"):
        for row in await _fetch(stack, service, "SELECT event_id, routing_key FROM outbox "
                                "WHERE correlation_id = $1", correlation_id):
            found.published[row["routing_key"]] += 1
            events.append((str(row["event_id"]), row["routing_key"]))
    found.observed = Counter(r["type"] for r in await _fetch(
        stack, "notification", "SELECT type FROM observed_event WHERE correlation_id = $1",
        correlation_id))
    consumer_db = {queue: service for service, queues in CONSUMER_QUEUES.items()
                   for queue in (Topology(stack.namespace).queue_name(service, p) for p, _ in queues)}
    for event_id, routing_key in events:
        for queue in _consumers_of(stack.namespace, routing_key):
            found.expected_inbox[(routing_key, queue)] += 1
            rows = await _fetch(stack, consumer_db[queue], "SELECT count(*) FROM inbox "
                                "WHERE consumer = $1 AND message_id = $2", queue, event_id)
            if rows[0][0]:
                found.inbox[(routing_key, queue)] += rows[0][0]
    return found


async def unsent_outbox(stack: Stack) -> dict[str, int]:
    """Service → outbox rows not sent yet (every service, every journey)."""
    counts = {}
    for service in stack.services:
        rows = await _fetch(stack, service.name, "SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        counts[service.name] = int(rows[0][0])
    return counts


async def dead_letters(stack: Stack) -> dict[str, int]:
    """Dead-letter queue → messages in it, for every consuming queue of the stack."""
    connection = await aio_pika.connect(stack.amqp_url)
    try:
        channel = await connection.channel()
        counts = {}
        for queue in known_queues(stack.namespace):
            declared = await channel.declare_queue(f"{queue}.dlq", passive=True)
            counts[declared.name] = declared.declaration_result.message_count or 0
        return counts
    finally:
        await connection.close()


async def settled(stack: Stack, correlation_id: str, observed: Counter[str], *,
                  timeout_s: float = 60.0, quiet_s: float = 2.0) -> Journey:
    """The journey once the notification service observed `observed` and every outbox is
    drained, and nothing more happened for `quiet_s` (a late duplicate would show)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = await journey(stack, correlation_id)
        drained = not any((await unsent_outbox(stack)).values())
        # The notification service observes the event types its rules name: wait for those.
        if drained and all(found.observed[t] >= n for t, n in observed.items()
                           if notification_observes(t)):
            break
        if time.monotonic() > deadline:
            return found  # the caller's assertions say what is missing
        await asyncio.sleep(0.3)
    await asyncio.sleep(quiet_s)
    return await journey(stack, correlation_id)


# A retry is a duplicate in the making (a second insert refused by a constraint, say) that
# would reach a dead-letter queue only after the delivery limit: no fault here but the crash
# itself may cause one.
TROUBLE = ("retrying message", "dead-lettered message", "Traceback")


async def assert_nothing_left_over(stack: Stack) -> None:
    """Every outbox row sent; no dead letter in any queue; no retry or traceback in any log."""
    assert await unsent_outbox(stack) == {s.name: 0 for s in stack.services}
    letters = await dead_letters(stack)
    assert not any(letters.values()), f"dead letters: {letters}"
    troubles = [f"{s.name}: {line}" for s in stack.services for line in stack.log_lines(s.name)
                if any(word in line for word in TROUBLE)]
    assert not troubles, "\n".join(troubles[:10])
