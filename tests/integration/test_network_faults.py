"""Slow and half-dead connections, between the services and the broker or the database.

A `FaultProxy` (tests/faults.py) sits in front of the shared servers for one client only. A
half-dead connection — a NAT or firewall that forgot it, a peer that froze — delivers nothing
and closes nothing, so only the AMQP heartbeat (or a timeout) can tell; the client must notice
and open a new one. A reset (RST) is loud, but every pooled connection it hits is dead, and
the pool must not keep handing them out.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import registry
from shared.contracts.envelope import Actor, new_envelope
from shared.db.engine import STATEMENT_TIMEOUT_S, make_engine
from shared.messaging.permissions import broker_user
from shared.messaging.relay import OutboxRelay
from shared.messaging.topology import Topology
from shared.stack import IsolatedStack
from tests.conftest import DatabaseFactory, RabbitJanitor, Servers, StuckSessionWatch
from tests.faults import FaultProxy
from tests.integration.widget_schema import OUTBOX, WIDGET, WidgetUow, create_schema, widget_unit_of_work

HEARTBEAT_S = 2  # asked for in the URL; RabbitMQ agrees to the lower of its own and ours
ACTOR = Actor(id="widget-maker", role="system")
POOL_SIZE = 3
# A unit of work still waiting after this long on a dead connection hangs: the engine's
# statement timeout, and the rollback's after it, plus a margin.
HANG_S = 3 * STATEMENT_TIMEOUT_S


async def until(condition: Callable[[], Coroutine[Any, Any, bool]], timeout: float, what: str) -> float:
    """Poll `condition` until true; returns the seconds it took, fails with `what` otherwise."""
    started = time.monotonic()
    while not await condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        await asyncio.sleep(0.2)
    return time.monotonic() - started


def with_heartbeat(url: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}heartbeat={HEARTBEAT_S}"


@pytest.fixture
async def proxy_to_broker(servers: Servers) -> AsyncIterator[FaultProxy]:
    proxy = await FaultProxy.for_url(servers.amqp_url).start()
    yield proxy
    await proxy.close()


@pytest.fixture
async def widgets(databases: DatabaseFactory) -> AsyncIterator[AsyncEngine]:
    """A producer's database with the plumbing tables, reached directly (no proxy)."""
    engine = make_engine(await databases("widgets"), pool_size=POOL_SIZE, service="widgets")
    async with engine.begin() as conn:
        await conn.run_sync(create_schema)
    yield engine
    await engine.dispose()


async def make_widget(uow: WidgetUow, widget_id: str) -> uuid.UUID:
    async with uow.begin(actor=ACTOR) as tx:
        await tx.conn.execute(sa.insert(WIDGET).values(id=widget_id, n=1))
        return tx.emit("widget.made", {"widget_id": widget_id})


async def unsent(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        query = sa.select(sa.func.count()).select_from(OUTBOX).where(OUTBOX.c.sent_at.is_(None))
        return int((await conn.execute(query)).scalar_one())


# ------------------------------------------------------------------------- service ↔ broker


async def test_a_relay_whose_broker_connection_goes_half_dead_publishes_on_a_new_one(
    servers: Servers, namespace: str, widgets: AsyncEngine, proxy_to_broker: FaultProxy,
    rabbit_janitor: RabbitJanitor, stuck_session_watch: StuckSessionWatch,
) -> None:
    # The relay keeps its batch's transaction (the rows' locks) open while it awaits the
    # broker's confirms; on a half-dead connection that lasts until the heartbeat gives up.
    stuck_session_watch.expected.add("spine-widgets")
    connection = await aio_pika.connect(servers.amqp_url)
    channel = await connection.channel()
    topology = Topology(namespace)
    events = await channel.declare_exchange(topology.events.name, aio_pika.ExchangeType.TOPIC,
                                            durable=True, arguments=topology.events_arguments)
    received = await channel.declare_queue(rabbit_janitor.queue(f"{namespace}.widgets"), durable=True)
    await received.bind(events, "widget.#")
    relay = OutboxRelay(widgets, with_heartbeat(proxy_to_broker.url(servers.amqp_url)),
                        topology, name="widgets", poll_interval_s=0.2)
    relaying = asyncio.create_task(relay.run())
    uow = widget_unit_of_work(widgets, "widgets")
    seen: set[str] = set()

    async def delivered(ids: set[str]) -> bool:
        while (message := await received.get(no_ack=True, fail=False)) is not None:
            seen.add(str(message.message_id))
        return ids <= seen

    try:
        before = {str(await make_widget(uow, f"before-{i}")) for i in range(5)}
        await until(lambda: delivered(before), 15, "the events before the fault")
        connections_before = proxy_to_broker.accepted

        proxy_to_broker.black_hole_open()  # the relay's connection passes nothing from now on
        after = {str(await make_widget(uow, f"after-{i}")) for i in range(5)}
        took = await until(lambda: delivered(after), 10 * HEARTBEAT_S + 15,
                           "the events committed after the connection went half-dead")
    finally:
        await relay.stop()
        await asyncio.wait_for(relaying, timeout=30)
        await connection.close()
    assert proxy_to_broker.accepted > connections_before, "the relay never opened a new connection"
    assert await unsent(widgets) == 0
    print(f"half-dead broker connection replaced; events out {took:.1f} s after the fault")


async def test_a_service_whose_broker_connection_goes_half_dead_consumes_again_on_a_new_one(
    servers: Servers, namespace: str, proxy_to_broker: FaultProxy, tmp_path: Path,
) -> None:
    stack = IsolatedStack(namespace=namespace, pg_url=servers.pg_url,
                          amqp_url=with_heartbeat(proxy_to_broker.url(servers.amqp_url)),
                          log_dir=tmp_path, secret=os.environ["SPINE_JWT_SECRET"],
                          services=(registry.NOTIFICATION,))
    queue_name = Topology(namespace).queue_name("notification", "events")
    try:
        await stack.start(ready_timeout_s=60.0)
        connection = await aio_pika.connect(servers.amqp_url)
        try:
            channel = await connection.channel()
            first = await publish_dispatch_events(channel, servers.amqp_url, namespace, 5)
            await until(lambda: handled(stack.dsn("notification"), first), 20, "events before the fault")
            connections_before = proxy_to_broker.accepted

            proxy_to_broker.black_hole_open()
            later = await publish_dispatch_events(channel, servers.amqp_url, namespace, 20)
            took = await until(lambda: handled(stack.dsn("notification"), later),
                               10 * HEARTBEAT_S + 30,
                               "events published after the service's connection went half-dead\n"
                               + stack.log_tail("notification", 40))
            queue = await channel.declare_queue(queue_name, passive=True)
            consumers = queue.declaration_result.consumer_count
        finally:
            await connection.close()
        assert stack.procs["notification"].poll() is None, "the service died instead of healing"
        async with httpx.AsyncClient(timeout=5) as client:
            assert (await client.get(f"{stack.url('notification')}/readyz")).status_code == 200
    finally:
        # Cleaned up over a direct connection: through the faulty proxy, deletes were cut off
        # half-way and the stack's remaining queues stayed on the broker (seen).
        stack.amqp_url = servers.amqp_url
        failures = await stack.cleanup()
    assert not failures, failures
    assert proxy_to_broker.accepted > connections_before, "no new broker connection was opened"
    assert consumers >= 1, f"{queue_name} has no consumer after the fault"
    print(f"half-dead consumer connection replaced; consuming again {took:.1f} s after the fault")


async def publish_dispatch_events(channel: aio_pika.abc.AbstractChannel, amqp_url: str,
                                  namespace: str, count: int) -> set[str]:
    confirmed = await channel.get_exchange(f"{namespace}.events")
    ids = set()
    for _ in range(count):
        envelope = new_envelope(
            # A type the notification rules name: its queue is bound to no other kind.
            type="dispatch.shipped", producer="dispatch",
            data={"dispatch_id": str(uuid.uuid4()), "order_id": str(uuid.uuid4()), "version": 1,
                  "status": "shipped"},
            actor=Actor(id="dispatch", role="system"))
        await confirmed.publish(
            aio_pika.Message(json.dumps(envelope).encode(), message_id=envelope["event_id"],
                             correlation_id=envelope["correlation_id"],
                             content_type="application/json", user_id=broker_user(amqp_url),
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key="dispatch.shipped")
        ids.add(str(envelope["event_id"]))
    return ids


async def handled(dsn: str, ids: set[str]) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT message_id FROM inbox WHERE message_id = ANY($1::text[])",
                                list(ids))
    finally:
        await conn.close()
    return len(rows) == len(ids)


# ------------------------------------------------------------------------- service ↔ database


@pytest.fixture
async def proxied_widgets(
    servers: Servers, widgets: AsyncEngine
) -> AsyncIterator[tuple[AsyncEngine, FaultProxy]]:
    """The widgets database through a fault proxy, with a warm pool of POOL_SIZE connections."""
    proxy = await FaultProxy.for_url(servers.pg_url).start()
    url = widgets.url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    engine = make_engine(url, pool_size=POOL_SIZE, service="widgets-proxied")
    uow = widget_unit_of_work(engine, "widgets")
    # Every pooled connection in use at once, so that the fault finds all of them open.
    await asyncio.gather(*(make_widget(uow, f"warm-{i}") for i in range(POOL_SIZE)))
    assert proxy.open_connections >= POOL_SIZE
    try:
        yield engine, proxy
    finally:
        await engine.dispose()
        await proxy.close()


async def attempts_after_fault(uow: WidgetUow, count: int, timeout_s: float) -> list[str]:
    """`count` units of work one after the other; what became of each ('ok' or the error)."""
    outcomes = []
    for i in range(count):
        task = asyncio.create_task(make_widget(uow, f"after-{i}"))
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
        if not done:  # still waiting: it hangs (an error raised in time is an ending)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            outcomes.append("hung")
        elif (exc := task.exception()) is not None:
            outcomes.append(f"{exc.__class__.__name__}: {str(exc)[:80]}")
        else:
            outcomes.append("ok")
    return outcomes


async def test_a_pool_whose_connections_were_all_reset_gives_out_no_dead_ones_afterwards(
    proxied_widgets: tuple[AsyncEngine, FaultProxy],
) -> None:
    engine, proxy = proxied_widgets
    proxy.reset()
    await asyncio.sleep(0.2)
    outcomes = await attempts_after_fault(widget_unit_of_work(engine, "widgets"), 3 * POOL_SIZE, 20)
    # A dead connection may fail the one unit of work that finds it, never a second one.
    assert outcomes[POOL_SIZE:] == ["ok"] * (2 * POOL_SIZE), outcomes
    assert outcomes.count("ok") >= 2 * POOL_SIZE, outcomes


async def test_a_unit_of_work_on_a_half_dead_database_connection_ends_and_the_pool_recovers(
    proxied_widgets: tuple[AsyncEngine, FaultProxy],
) -> None:
    engine, proxy = proxied_widgets
    proxy.black_hole_open()
    started = time.monotonic()
    outcomes = await attempts_after_fault(widget_unit_of_work(engine, "widgets"), 3 * POOL_SIZE,
                                          HANG_S)
    took = time.monotonic() - started
    # Each unit of work on a half-dead connection ends (its statement times out, which the
    # delivery policy holds and retries as an outage); the pool then gives out live ones.
    assert "hung" not in outcomes, f"a unit of work hung on a half-dead connection: {outcomes}"
    assert outcomes[POOL_SIZE:] == ["ok"] * (2 * POOL_SIZE), outcomes
    print(f"half-dead database connections: {outcomes} in {took:.1f} s")


