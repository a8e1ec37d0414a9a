"""SIGTERM under a flow of orders: the service stops taking work, settles what it holds, exits 0.

The bound: the broker waits up to its graceful timeout (20 s, `shared/messaging/broker.py`)
for handlers in flight, then the relay finishes its batch (a publish gives up after 5 s,
`shared/messaging/relay.py`); no HTTP request is open here, so uvicorn's own 20 s for open
connections does not add. A service that needs longer than 25 s fails the test.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import aio_pika
import asyncpg

from shared.contracts.envelope import Actor, new_envelope
from shared.messaging.permissions import broker_user
from shared.messaging.topology import Topology
from tests.e2e.conftest import Stack
from tests.e2e.effects import assert_nothing_left_over, notification_observes
from tests.e2e.test_order_to_shipped import sample_order

ORDERS = 400
SHUTDOWN_BOUND_S = 25.0


async def publish_orders(stack: Stack, count: int) -> list[str]:
    """Publish `count` submissions from `mes` on one confirming channel; their correlation ids."""
    assert stack.connection is not None
    channel = await stack.connection.channel(publisher_confirms=True, on_return_raises=True)
    exchange = await channel.get_exchange(stack.exchange)
    correlation_ids = []
    messages = []
    for _ in range(count):
        envelope = new_envelope(type="ext.mes.order.submitted", producer="mes",
                                data=sample_order(f"MES-{uuid.uuid4().hex[:10]}"),
                                actor=Actor(id="mes", role="integration"))
        correlation_ids.append(str(envelope["correlation_id"]))
        messages.append(aio_pika.Message(
            json.dumps(envelope).encode(), message_id=envelope["event_id"],
            content_type="application/json", user_id=broker_user(stack.amqp_url),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT))
    await asyncio.gather(*(exchange.publish(m, routing_key="ext.mes.order.submitted")
                           for m in messages))
    await channel.close()
    return correlation_ids


async def scalar(stack: Stack, service: str, query: str, *args: object) -> int:
    conn = await asyncpg.connect(stack.dsn(service))
    try:
        return int(await conn.fetchval(query, *args))
    finally:
        await conn.close()


async def waiting_in(stack: Stack, queue: str) -> int:
    """Messages ready in `queue` (not held by a consumer)."""
    connection = await aio_pika.connect(stack.amqp_url)
    try:
        declared = await (await connection.channel()).declare_queue(queue, passive=True)
        return declared.declaration_result.message_count or 0
    finally:
        await connection.close()


async def test_a_service_stopped_under_a_flow_of_orders_exits_0_in_time_and_loses_or_doubles_nothing(
    module_stack: Stack,
) -> None:
    stack = module_stack
    ids = await publish_orders(stack, ORDERS)
    orders_of = "SELECT count(*) FROM customer_order WHERE correlation_id = ANY($1::uuid[])"
    for _ in range(1200):
        if await scalar(stack, "order", orders_of, ids) >= 20:
            break
        await asyncio.sleep(0.05)

    started = time.monotonic()
    code, problem = await stack.terminate("order", grace_s=60)
    took = time.monotonic() - started
    assert code == 0, f"exit code {code} ({problem}):\n{stack.log_tail('order', 30)}"
    assert took < SHUTDOWN_BOUND_S, f"took {took:.1f} s"
    assert "order stopped cleanly" in stack.log_tail("order", 10)
    # It stopped taking work: submissions were still waiting in its queue when it left.
    done = await scalar(stack, "order", orders_of, ids)
    queue = Topology(stack.namespace).queue_name("order", "order-submitted")
    assert await waiting_in(stack, queue) > 0, "the service drained the queue before it stopped"
    print(f"order service: SIGTERM to exit {took:.2f} s, exit code {code}; {done} of {ORDERS} "
          f"orders taken before it stopped")

    await stack.respawn("order")
    # The journeys end at the dispatch service (no notification rule names their events).
    dispatches = "SELECT count(*) FROM dispatch WHERE correlation_id = ANY($1::uuid[])"
    for _ in range(240):
        if await scalar(stack, "dispatch", dispatches, ids) >= ORDERS:
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(2.0)  # a late duplicate would show

    # Exactly one order per submission, each received and confirmed once in the audit log.
    assert await scalar(stack, "order", orders_of, ids) == ORDERS
    assert await scalar(stack, "order", "SELECT count(DISTINCT correlation_id) FROM customer_order "
                        "WHERE correlation_id = ANY($1::uuid[])", ids) == ORDERS
    assert await scalar(stack, "order", "SELECT count(*) FROM audit_log a JOIN customer_order o "
                        "ON a.entity_id = o.id::text WHERE o.correlation_id = ANY($1::uuid[])",
                        ids) == 2 * ORDERS
    assert await scalar(stack, "order", "SELECT count(*) FROM audit_log WHERE action NOT IN "
                        "('order.received', 'order.confirmed') AND correlation_id = ANY($1::uuid[])",
                        ids) == 0
    # One dispatch per order, created once; every event observed once.
    assert await scalar(stack, "dispatch", "SELECT count(*) FROM dispatch "
                        "WHERE correlation_id = ANY($1::uuid[])", ids) == ORDERS
    assert await scalar(stack, "dispatch", "SELECT count(*) FROM audit_log "
                        "WHERE correlation_id = ANY($1::uuid[])", ids) == ORDERS
    # The notification service consumes only the events its rules name: none of these journeys'
    # (dispatch.created is no rule's), so it kept nothing of them.
    assert not notification_observes("dispatch.created")
    assert await scalar(stack, "notification", "SELECT count(*) FROM observed_event "
                        "WHERE correlation_id = ANY($1::uuid[])", ids) == 0
    await assert_nothing_left_over(stack)
