"""A broker restart under load loses nothing: every event the broker confirmed is handled once.

When RabbitMQ closes a connection, aiormq cancels every consumer task still running. A
cancellation that lands while a unit of work awaits BEGIN used to leave its pooled connection
inside a transaction, after which later messages were acked with nothing committed — 40 to 155
events lost in about one restart in five. This restarts a real broker (`rabbitmqctl
stop_app` / `start_app`) twice — a private RabbitMQ node of the test's own (tests.chaos.servers),
never the one other tests share — while the notification service, a real process, consumes a
backlog, and checks every confirmed event against the service's inbox. Through the same
restarts an outbox relay (in this process) publishes events committed all along, and every one
of them must reach the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import httpx
import pytest
import sqlalchemy as sa

from shared import registry
from shared.contracts.envelope import Actor, new_envelope
from shared.db.engine import make_engine
from shared.db.migrate import drop_database, ensure_database
from shared.messaging.permissions import broker_user
from shared.messaging.relay import OutboxRelay
from shared.messaging.topology import Topology
from shared.stack import IsolatedStack
from tests.chaos.servers import PrivateRabbit, private_servers_available
from tests.conftest import Servers
from tests.integration.widget_schema import OUTBOX, WidgetUow, create_schema, widget_unit_of_work

RESTARTS = 2
OUTAGE_S = 2.0

pytestmark = pytest.mark.skipif(private_servers_available() is not None,
                                reason=f"private servers: {private_servers_available()}")


@pytest.fixture
def rabbit() -> Iterator[PrivateRabbit]:
    """A RabbitMQ node of this test's own: restarting it disturbs no other test."""
    node = PrivateRabbit().start()
    try:
        yield node
    finally:
        node.destroy()


async def broker_answers(amqp_url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            connection = await aio_pika.connect(amqp_url, timeout=3)
            await connection.close()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


class Publisher:
    """Publishes `dispatch.shipped` events (a type the notification rules name, so its queue is
    bound to it) as fast as the broker confirms them, through outages."""

    def __init__(self, amqp_url: str, namespace: str) -> None:
        self.amqp_url = amqp_url
        self.namespace = namespace
        self.confirmed: set[str] = set()
        self.failed_batches = 0
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        connection = await aio_pika.connect_robust(self.amqp_url)
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            exchange = await channel.get_exchange(f"{self.namespace}.events")
            while not self._stop.is_set():
                batch = [self._message() for _ in range(50)]
                results = await asyncio.gather(
                    *(exchange.publish(m, routing_key="dispatch.shipped", mandatory=True)
                      for m in batch),
                    return_exceptions=True,
                )
                for message, result in zip(batch, results, strict=True):
                    if not isinstance(result, BaseException):
                        assert message.message_id is not None
                        self.confirmed.add(message.message_id)
                if any(isinstance(r, BaseException) for r in results):
                    self.failed_batches += 1  # the broker is away: unconfirmed, so not counted
                    await asyncio.sleep(0.3)
        finally:
            with contextlib.suppress(Exception):
                await connection.close()

    def _message(self) -> aio_pika.Message:
        dispatch_id = str(uuid.uuid4())
        envelope = new_envelope(
            type="dispatch.shipped", producer="dispatch",
            data={"dispatch_id": dispatch_id, "order_id": str(uuid.uuid4()), "version": 1,
                  "status": "shipped"},
            actor=Actor(id="dispatch", role="system"),
        )
        return aio_pika.Message(
            json.dumps(envelope).encode(), message_id=envelope["event_id"],
            correlation_id=envelope["correlation_id"], content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            # The broker vouches for the sender; the consumers refuse a message without it.
            user_id=broker_user(self.amqp_url),
        )


class OutboxLoad:
    """Commits a `widget.made` event to an outbox every few milliseconds; its relay sends them."""

    def __init__(self, uow: WidgetUow, relay: OutboxRelay) -> None:
        self.uow = uow
        self.relay = relay
        self.committed: set[str] = set()
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        actor = Actor(id="widget-maker", role="system")
        while not self._stop.is_set():
            async with self.uow.begin(actor=actor) as tx:
                event_id = tx.emit("widget.made", {"n": len(self.committed)})
            self.committed.add(str(event_id))
            await asyncio.sleep(0.01)

    async def unsent(self) -> int:
        async with self.uow.engine.connect() as conn:
            query = sa.select(sa.func.count()).select_from(OUTBOX).where(OUTBOX.c.sent_at.is_(None))
            return int((await conn.execute(query)).scalar_one())


@pytest.fixture
async def outbox_load(
    servers: Servers, rabbit: PrivateRabbit, namespace: str, notification: dict[str, Any]
) -> AsyncIterator[tuple[OutboxLoad, aio_pika.abc.AbstractQueue]]:
    """A producer with its own outbox and relay, and a durable queue for what it publishes."""
    database = f"{namespace}_widgets"
    await ensure_database(servers.pg_url, database)
    pg_async = servers.pg_url.replace("postgresql://", "postgresql+asyncpg://", 1)
    engine = make_engine(f"{pg_async}/{database}", pool_size=2, service="widgets")
    async with engine.begin() as conn:
        await conn.run_sync(create_schema)
    connection = await aio_pika.connect_robust(rabbit.amqp_url)
    channel = await connection.channel()
    # Durable and persistent, so what the broker confirmed before a restart is still there.
    received = await channel.declare_queue(f"{namespace}.widgets", durable=True)
    await received.bind(f"{namespace}.events", "widget.#")
    relay = OutboxRelay(engine, rabbit.amqp_url, Topology(namespace), name="widgets",
                        poll_interval_s=0.5)
    relaying = asyncio.create_task(relay.run())
    try:
        yield OutboxLoad(widget_unit_of_work(engine, "widgets"), relay), received
    finally:
        await relay.stop()
        await asyncio.wait_for(relaying, timeout=30)
        await engine.dispose()
        with contextlib.suppress(Exception):
            await received.delete(if_unused=False, if_empty=False)
        await connection.close()
        await drop_database(servers.pg_url, database)


async def message_ids_in(queue: aio_pika.abc.AbstractQueue) -> set[str]:
    ids: set[str] = set()
    while (message := await queue.get(no_ack=True, fail=False, timeout=5)) is not None:
        assert message.message_id is not None
        ids.add(message.message_id)
    return ids


@pytest.fixture
async def notification(
    servers: Servers, rabbit: PrivateRabbit, namespace: str, tmp_path: Path
) -> AsyncIterator[dict[str, Any]]:
    """The notification service alone, as a process, on its own database and namespace."""
    stack = IsolatedStack(namespace=namespace, pg_url=servers.pg_url, amqp_url=rabbit.amqp_url,
                          log_dir=tmp_path, secret=os.environ["SPINE_JWT_SECRET"],
                          services=(registry.NOTIFICATION,))
    try:
        await stack.start(ready_timeout_s=60.0)
        yield {"proc": stack.procs["notification"], "url": stack.url("notification"),
               "log": stack.log_path("notification"), "dsn": stack.dsn("notification")}
    finally:
        await stack.cleanup()


async def wait_ready(service: dict[str, Any], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if service["proc"].poll() is not None:
                raise AssertionError(f"exited: {service['log'].read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{service['url']}/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise AssertionError(f"not ready after {timeout}s: {service['log'].read_text()}")


async def handled(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return {row["message_id"] for row in await conn.fetch("SELECT message_id FROM inbox")}
    finally:
        await conn.close()


async def test_every_event_confirmed_around_broker_restarts_has_its_inbox_row(
    rabbit: PrivateRabbit, namespace: str, notification: dict[str, Any],
    outbox_load: tuple[OutboxLoad, aio_pika.abc.AbstractQueue],
) -> None:
    producer, widgets = outbox_load
    producing = asyncio.create_task(producer.run())
    publisher = Publisher(rabbit.amqp_url, namespace)
    publishing = asyncio.create_task(publisher.run())
    try:
        for _ in range(RESTARTS):
            # A backlog, so that every restart lands on a full prefetch of units of work.
            started = len(publisher.confirmed)
            while len(publisher.confirmed) < started + 600:
                assert not publishing.done(), publishing
                await asyncio.sleep(0.05)
            await asyncio.to_thread(rabbit.stop_app)
            await asyncio.sleep(OUTAGE_S)
            await asyncio.to_thread(rabbit.start_app)
            await broker_answers(rabbit.amqp_url)
        await asyncio.sleep(2.0)  # more load after the last restart, on the healed service
    finally:
        publisher.stop()
        producer.stop()
        await publishing
        await producing

    confirmed = publisher.confirmed
    deadline = time.monotonic() + 90
    missing = confirmed - await handled(notification["dsn"])
    while missing and time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        missing = confirmed - await handled(notification["dsn"])
    assert not missing, (
        f"{len(missing)} of {len(confirmed)} confirmed events never reached the inbox "
        f"(e.g. {sorted(missing)[:3]})\n{notification['log'].read_text()[-4000:]}"
    )
    assert publisher.failed_batches, "the broker restarts should have interrupted publishing"
    await wait_ready(notification, timeout=30)  # healed by itself, without anyone's help

    # The relay, too, heals by itself: everything committed goes out, at least once.
    deadline = time.monotonic() + 60
    unsent = await producer.unsent()
    while unsent and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        unsent = await producer.unsent()
    assert unsent == 0, f"the relay left {unsent} event(s) unsent after the restarts"
    lost = producer.committed - await message_ids_in(widgets)
    assert not lost, (f"{len(lost)} of {len(producer.committed)} events the relay marked sent "
                      "never reached the queue")
