"""The outbox, the relay, the inbox, the delivery policy and the audit log, on real servers.

Each test gets its own database (the v1 plumbing migration plus a tiny `widget` table) and its
own exchange namespace, and removes both when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import aio_pika
import asyncpg
import pytest
import sqlalchemy as sa
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from faststream.rabbit import RabbitBroker, RabbitQueue
from faststream.rabbit.annotations import RabbitMessage
from opentelemetry import trace
from pydantic import Field
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

import shared.messaging.relay as relay_module
from shared.contracts.envelope import Actor, Contract, Envelope, new_envelope
from shared.db.engine import make_engine
from shared.messaging.broker import make_broker
from shared.messaging.relay import OutboxRelay
from shared.messaging.topology import ERROR_HEADER, QUEUE_HEADER, Topology, declare_unrouted
from shared.uow import Duplicate
from tests.faults import DelayingProxy
from tests.integration.widget_schema import (
    AUDIT,
    OUTBOX,
    WIDGET,
    WidgetUow,
    create_schema,
    widget_unit_of_work,
)

SERVICE = "testsvc"
ACTOR = Actor(id="u-1042", role="planner")
DELIVERY_LIMIT = 3
# Attempts a handler gets for a failure that is neither an outage nor permanent.
RETRY_LIMIT = 3
# The queues this file's subscribers consume, by purpose: its row of `CONSUMER_QUEUES`.
QUEUES = {"widgets": "widget.#", "p": "t.#"}


def queue_for(topology: Topology, purpose: str) -> RabbitQueue:
    return topology.queue(SERVICE, purpose, QUEUES[purpose])

TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


# --------------------------------------------------------------------------------------------
# Fixtures: one database, one namespace, brokers and a raw AMQP channel for observing the wire
# --------------------------------------------------------------------------------------------


@pytest.fixture
async def database_url(databases: Callable[[str], Awaitable[str]]) -> str:
    url = await databases(SERVICE)
    engine = make_engine(url, pool_size=2, service=SERVICE)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(create_schema)
    finally:
        await engine.dispose()
    return url


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(database_url, pool_size=5, service=SERVICE)
    yield engine
    await engine.dispose()


@pytest.fixture
def uow(engine: AsyncEngine) -> WidgetUow:
    return widget_unit_of_work(engine, SERVICE)


@pytest.fixture
def topology(namespace: str) -> Topology:
    return Topology(namespace=namespace, delivery_limit=DELIVERY_LIMIT)


@pytest.fixture
async def new_broker(
    servers: Any, topology: Topology, rabbit_janitor: Any
) -> AsyncIterator[Callable[[], RabbitBroker]]:
    """A factory of unstarted brokers, each stopped (and its queues deleted) at teardown."""
    made: list[RabbitBroker] = []

    def build() -> RabbitBroker:
        # No provenance check: the widget plumbing's routing keys belong to no Spine producer.
        broker = make_broker(servers.amqp_url, service=SERVICE, topology=topology, prefetch=16,
                             queues=[queue_for(topology, purpose) for purpose in QUEUES],
                             senders=None, retry_limit=RETRY_LIMIT, hold_max_s=0.3)
        made.append(broker)
        return broker

    yield build
    # Every purpose's queue and dead-letter queue, subscribed or not: tests declare DLQs of
    # purposes no subscriber of theirs consumes (seen left on the broker after a run).
    for purpose in QUEUES:
        name = rabbit_janitor.queue(topology.queue_name(SERVICE, purpose))
        rabbit_janitor.queue(topology.dead_letter_queue(name).name)
    for broker in made:
        rabbit_janitor.subscribers_of(broker, topology)
        await broker.stop()


@pytest.fixture
async def broker(new_broker: Callable[[], RabbitBroker], topology: Topology) -> RabbitBroker:
    """A connected broker with the events exchange declared (what `Runtime.lifespan` does)."""
    broker = new_broker()
    await broker.connect()
    await broker.declare_exchange(topology.events)
    return broker


@pytest.fixture
async def new_relay(
    engine: AsyncEngine, broker: RabbitBroker, servers: Any, topology: Topology
) -> AsyncIterator[Callable[..., OutboxRelay]]:
    """A factory of relays as a service builds them (the `broker` has declared the exchange)."""
    made: list[OutboxRelay] = []

    def build(on: AsyncEngine | None = None, **options: Any) -> OutboxRelay:
        relay = OutboxRelay(on or engine, servers.amqp_url, topology, name=SERVICE, **options)
        made.append(relay)
        return relay

    yield build
    for relay in made:
        await relay.close()


@pytest.fixture
def relay(new_relay: Callable[..., OutboxRelay]) -> OutboxRelay:
    """The relay as a service builds it; tests drive it one `drain()` at a time."""
    return new_relay(poll_interval_s=30.0)


@pytest.fixture
async def channel(servers: Any) -> AsyncIterator[AbstractChannel]:
    """A plain aio-pika channel: the test's own eyes and hands on the wire."""
    conn = await aio_pika.connect(servers.amqp_url)
    yield await conn.channel()
    await conn.close()


class Recorder:
    """Collects every message a queue delivers (auto-acked) so tests can wait for them."""

    def __init__(self, queue: AbstractQueue) -> None:
        self.queue = queue
        self.messages: list[AbstractIncomingMessage] = []
        self._arrived = asyncio.Event()

    async def start(self) -> Recorder:
        await self.queue.consume(self._on_message, no_ack=True)
        return self

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self.messages.append(message)
        self._arrived.set()

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[AbstractIncomingMessage]:
        """The first `count` messages; fails if they do not all arrive within `timeout`."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"{self.queue.name}: {len(self.messages)} of {count} messages in {timeout}s"
                )
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        return self.messages[:count]

    async def assert_no_more_than(self, count: int, settle: float = 0.5) -> None:
        await asyncio.sleep(settle)
        assert len(self.messages) == count, (
            f"{self.queue.name}: expected {count} messages, got {len(self.messages)}: "
            f"{[m.message_id for m in self.messages]}"
        )


@pytest.fixture
def probe(
    channel: AbstractChannel, topology: Topology, rabbit_janitor: Any
) -> Callable[[str], Awaitable[Recorder]]:
    """`await probe("widget.#")`: a queue bound on the events exchange, recording deliveries."""

    async def bind(routing_key: str) -> Recorder:
        name = rabbit_janitor.queue(f"{topology.namespace}.probe.{uuid.uuid4().hex[:6]}")
        queue = await channel.declare_queue(name, exclusive=True)
        await queue.bind(topology.events.name, routing_key=routing_key)
        return await Recorder(queue).start()

    return bind


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0) -> None:
    """Wait until `check()` (plain or async) holds; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while not await _resolve(check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.05)


async def scalar(engine: AsyncEngine, query: sa.Executable | str) -> Any:
    async with engine.connect() as conn:
        stmt = sa.text(query) if isinstance(query, str) else query
        return (await conn.execute(stmt)).scalar_one()


async def make_widget(
    uow: WidgetUow,
    widget_id: str,
    *,
    routing_key: str = "widget.made",
    correlation_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """The producer's use case: a business row, its audit row and its event, in one commit."""
    async with uow.begin(actor=ACTOR, correlation_id=correlation_id) as tx:
        await tx.conn.execute(sa.insert(WIDGET).values(id=widget_id, n=1))
        tx.record(action="widget.made", entity_type="widget", entity_id=widget_id, to_state="made")
        return tx.emit(routing_key, {"widget_id": widget_id})


# --------------------------------------------------------------------------------------------
# The outbox and the relay
# --------------------------------------------------------------------------------------------


async def test_an_event_committed_with_its_business_row_is_published_once_as_the_wire_contract_says(
    uow: WidgetUow, engine: AsyncEngine, relay: OutboxRelay, probe: Any
) -> None:
    recorder = await probe("widget.#")
    correlation_id = uuid.uuid4()
    with trace.get_tracer("spinetest").start_as_current_span("POST /widgets") as span:
        trace_id = format(span.get_span_context().trace_id, "032x")
        event_id = await make_widget(uow, "w-1", correlation_id=correlation_id)

    assert await relay.drain() == 1
    [message] = await recorder.wait_for(1)

    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.message_id == str(event_id)
    assert message.correlation_id == str(correlation_id)
    assert message.content_type == "application/json"
    assert message.routing_key == "widget.made"
    traceparent = (message.headers or {}).get("traceparent")
    assert isinstance(traceparent, str) and (match := TRACEPARENT.match(traceparent)), traceparent
    assert match.group(1) == trace_id, "the relay must continue the trace of the emitting request"
    body = json.loads(message.body)
    assert body["event_id"] == str(event_id)
    assert body["type"] == "widget.made"
    assert body["producer"] == SERVICE
    assert body["correlation_id"] == str(correlation_id)
    assert body["actor"] == {"id": ACTOR.id, "role": ACTOR.role}
    assert body["data"] == {"widget_id": "w-1"}
    Envelope[dict[str, Any]].model_validate(body)

    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(OUTBOX))).one()
        audit = (await conn.execute(sa.select(AUDIT))).one()
    assert row.sent_at is not None and row.attempts == 1 and row.last_error is None
    assert (audit.entity_id, audit.actor_id, audit.correlation_id) == ("w-1", ACTOR.id,
                                                                       correlation_id)

    assert await relay.drain() == 0, "a sent event must not be published again"
    await recorder.assert_no_more_than(1)


async def test_a_rolled_back_transaction_publishes_nothing_and_leaves_no_audit_or_outbox_row(
    uow: WidgetUow, engine: AsyncEngine, relay: OutboxRelay, probe: Any
) -> None:
    recorder = await probe("widget.#")

    with pytest.raises(RuntimeError, match="out of stock"):
        async with uow.begin(actor=ACTOR) as tx:
            await tx.conn.execute(sa.insert(WIDGET).values(id="w-1", n=1))
            tx.record(action="widget.made", entity_type="widget", entity_id="w-1")
            tx.emit("widget.made", {"widget_id": "w-1"})
            raise RuntimeError("out of stock")
    # A failure while the outbox row is written (after the audit row) must undo everything.
    with pytest.raises((DBAPIError, asyncpg.PostgresError), match="routing_key"):
        async with uow.begin(actor=ACTOR) as tx:
            await tx.conn.execute(sa.insert(WIDGET).values(id="w-2", n=1))
            tx.record(action="widget.made", entity_type="widget", entity_id="w-2")
            tx.emit(None, {"widget_id": "w-2"})  # type: ignore[arg-type]  # NOT NULL violation

    assert await relay.drain() == 0
    await recorder.assert_no_more_than(0, settle=0.3)
    for table in (WIDGET, AUDIT, OUTBOX):
        assert await scalar(engine, sa.select(sa.func.count()).select_from(table)) == 0, table.name


class WatchedRelay(OutboxRelay):
    """A relay that says when a drain found nothing to do, i.e. it is about to wait."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.idle = asyncio.Event()

    async def drain(self) -> int:
        sent = await super().drain()
        if sent == 0:
            self.idle.set()
        return sent


async def test_the_relay_wakes_on_notify_at_commit_instead_of_waiting_for_its_poll(
    uow: WidgetUow, engine: AsyncEngine, broker: RabbitBroker, servers: Any, topology: Topology,
    probe: Any,
) -> None:
    recorder = await probe("widget.#")
    # `run()` closes the relay's connection on its way out.
    relay = WatchedRelay(engine, servers.amqp_url, topology, poll_interval_s=30.0)
    task = asyncio.create_task(relay.run())
    try:
        # Once the relay has found the outbox empty it waits: for a NOTIFY, or for 30 s.
        await asyncio.wait_for(relay.idle.wait(), timeout=5)
        committed = time.monotonic()
        event_id = await make_widget(uow, "w-1")
        [message] = await recorder.wait_for(1, timeout=5)
        latency = time.monotonic() - committed
    finally:
        await relay.stop()
        await asyncio.wait_for(task, timeout=10)
    assert message.message_id == str(event_id)
    assert latency < 1.0, f"delivered {latency:.2f}s after commit: the relay did not wake on NOTIFY"


async def test_the_relay_reconnects_by_itself_after_losing_the_broker_and_sends_what_waited(
    uow: WidgetUow, engine: AsyncEngine, broker: RabbitBroker, servers: Any, topology: Topology,
    probe: Any,
) -> None:
    recorder = await probe("widget.#")
    proxy = await DelayingProxy.for_url(servers.amqp_url).start()
    relay = OutboxRelay(engine, proxy.url(servers.amqp_url), topology, poll_interval_s=0.2)
    task = asyncio.create_task(relay.run())
    try:
        before = await make_widget(uow, "before")
        await recorder.wait_for(1)

        # The broker goes away: the relay's connection drops and reconnecting is refused.
        proxy.refusing = True
        proxy.cut()
        during = await make_widget(uow, "during")
        await asyncio.sleep(1.0)
        assert await scalar(engine, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 1

        proxy.refusing = False
        messages = await recorder.wait_for(2, timeout=30)
    finally:
        await relay.stop()
        await asyncio.wait_for(task, timeout=10)
        await proxy.close()
    assert [m.message_id for m in messages] == [str(before), str(during)]
    assert messages[1].delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert await scalar(engine, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0


async def test_an_event_no_queue_binds_is_kept_in_the_unrouted_queue_and_is_no_failure(
    uow: WidgetUow, engine: AsyncEngine, relay: OutboxRelay, channel: AbstractChannel,
    topology: Topology,
) -> None:
    await declare_unrouted(channel, topology)  # what `spine topology declare` does
    event_id = await make_widget(uow, "w-1", routing_key="widget.lonely")

    assert await relay.drain() == 1
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(OUTBOX))).one()
    assert row.sent_at is not None and row.attempts == 1 and row.last_error is None
    kept = await channel.declare_queue(topology.unrouted_queue.name, passive=True)
    message = await _get(kept)
    assert (message.message_id, message.routing_key) == (str(event_id), "widget.lonely")
    assert message.exchange == topology.events.name
    assert json.loads(message.body)["event_id"] == str(event_id)


async def test_an_event_even_the_unrouted_queue_cannot_take_stays_unsent_until_a_queue_is_bound(
    uow: WidgetUow, engine: AsyncEngine, relay: OutboxRelay, probe: Any
) -> None:
    # No `spine topology declare` ran, so the alternate exchange is missing: `mandatory` makes
    # the broker return the event, and the relay keeps it rather than lose it.
    event_id = await make_widget(uow, "w-1", routing_key="widget.lonely")

    with pytest.raises(Exception, match="left unsent"):
        await relay.drain()
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(OUTBOX))).one()
    assert row.sent_at is None, "an event no queue received must not be marked sent"
    assert row.attempts == 1
    assert row.last_error and "NO_ROUTE" in row.last_error, row.last_error

    recorder = await probe("widget.lonely")
    # The failed row waits out its own back-off: new commits' NOTIFYs must not republish it.
    assert await relay.drain() == 0
    await asyncio.sleep(0.6)
    assert await relay.drain() == 1
    [message] = await recorder.wait_for(1)
    assert message.message_id == str(event_id)
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(OUTBOX))).one()
    assert row.sent_at is not None and row.attempts == 2


async def test_returned_events_do_not_hold_back_the_events_behind_them(
    uow: WidgetUow, engine: AsyncEngine, new_relay: Callable[..., OutboxRelay], probe: Any
) -> None:
    recorder = await probe("widget.made")
    for i in range(3):  # more than a batch of events nobody listens to, then one that routes
        await make_widget(uow, f"lonely-{i}", routing_key="widget.lonely")
    event_id = await make_widget(uow, "w-1")
    relay = new_relay(batch_size=2)

    with pytest.raises(Exception, match="3 event"):
        await relay.drain()

    [message] = await recorder.wait_for(1, timeout=5)
    assert message.message_id == str(event_id)
    assert await scalar(engine, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 3
    assert await scalar(
        engine, "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND last_error LIKE '%NO_ROUTE%'"
    ) == 3


async def test_two_relays_on_one_outbox_publish_each_of_200_events_exactly_once(
    uow: WidgetUow,
    engine: AsyncEngine,
    database_url: str,
    new_relay: Callable[..., OutboxRelay],
    probe: Any,
) -> None:
    recorder = await probe("widget.#")
    event_ids: set[str] = set()
    for batch in range(10):
        async with uow.begin(actor=ACTOR) as tx:
            for i in range(20):
                event_ids.add(str(tx.emit("widget.made", {"widget_id": f"w-{batch}-{i}"})))

    # The second relay is another replica: its own engine (and, as every relay, its own
    # broker connection).
    other_engine = make_engine(database_url, pool_size=2, service=SERVICE)
    try:
        first = new_relay(batch_size=10)
        second = new_relay(other_engine, batch_size=10)
        await asyncio.gather(first.drain(), second.drain())
    finally:
        await other_engine.dispose()

    messages = await recorder.wait_for(200, timeout=20)
    await recorder.assert_no_more_than(200)
    per_id = Counter(m.message_id for m in messages)
    assert set(per_id) == event_ids
    assert [mid for mid, n in per_id.items() if n > 1] == []
    assert first.published + second.published == 200
    assert first.published > 0 and second.published > 0, "both relays should have shared the work"
    assert await scalar(engine, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0


# --------------------------------------------------------------------------------------------
# The inbox
# --------------------------------------------------------------------------------------------


async def handle_widget_message(uow: WidgetUow, consumer: str, message_id: str) -> None:
    """A consumer's use case: its effect (a row with a fresh id each time) and an audit row."""
    async with uow.begin(actor=ACTOR, inbox=(consumer, message_id)) as tx:
        effect_id = f"{consumer}:{message_id}:{uuid.uuid4().hex}"
        await tx.conn.execute(sa.insert(WIDGET).values(id=effect_id, n=1))
        tx.record(action="widget.copied", entity_type="widget", entity_id=effect_id)


async def test_a_message_handled_twice_through_the_inbox_has_one_effect(
    uow: WidgetUow, engine: AsyncEngine
) -> None:
    await handle_widget_message(uow, "widgets", "m-1")
    with pytest.raises(Duplicate):
        await handle_widget_message(uow, "widgets", "m-1")

    assert await scalar(engine, "SELECT count(*) FROM widget WHERE id LIKE 'widgets:m-1:%'") == 1
    assert await scalar(engine, "SELECT count(*) FROM audit_log") == 1
    assert await scalar(engine, "SELECT count(*) FROM inbox") == 1

    # The same message id is a different message to another consumer.
    await handle_widget_message(uow, "reports", "m-1")
    assert await scalar(engine, "SELECT count(*) FROM widget") == 2


async def test_a_failed_effect_leaves_no_inbox_row_so_the_redelivery_is_handled(
    uow: WidgetUow, engine: AsyncEngine
) -> None:
    with pytest.raises(RuntimeError):
        async with uow.begin(actor=ACTOR, inbox=("widgets", "m-1")):
            raise RuntimeError("database hiccup")
    await handle_widget_message(uow, "widgets", "m-1")
    assert await scalar(engine, "SELECT count(*) FROM widget") == 1


class WidgetMade(Contract):
    widget_id: str = Field(min_length=1)


async def test_duplicates_from_a_relay_that_crashed_before_marking_sent_have_one_effect_each(
    uow: WidgetUow,
    engine: AsyncEngine,
    relay: OutboxRelay,
    new_broker: Callable[[], RabbitBroker],
    topology: Topology,
    probe: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    consumer = new_broker()
    handled: list[str] = []

    @consumer.subscriber(queue_for(topology, "widgets"), topology.events)
    async def on_widget_made(event: Envelope[WidgetMade], msg: RabbitMessage) -> None:
        handled.append(msg.message_id)
        async with uow.begin(
            actor=event.actor,
            correlation_id=event.correlation_id,
            causation_id=event.event_id,
            inbox=("widgets", msg.message_id),
        ) as tx:
            await tx.conn.execute(
                sa.insert(WIDGET).values(id=f"copy:{event.event_id}:{uuid.uuid4().hex}", n=1)
            )

    await declare_dead_letters(consumer, topology)
    await consumer.start()
    wire = await probe("widget.#")
    event_ids = {str(await make_widget(uow, f"w-{i}")) for i in range(5)}

    # The crash: every event reaches the broker, then marking them sent fails and rolls back.
    monkeypatch.setattr(
        relay_module, "_MARK_SENT", "SELECT 1 / 0 WHERE cardinality($1::bigint[]) > 0"
    )
    with pytest.raises(DBAPIError, match="division by zero"):
        await relay.drain()
    assert await scalar(engine, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 5
    monkeypatch.undo()
    assert await relay.drain() == 5

    on_the_wire = Counter(m.message_id for m in await wire.wait_for(10))
    assert on_the_wire == dict.fromkeys(event_ids, 2), "the crash should have duplicated them"
    await eventually(lambda: len(handled) >= 10)
    await asyncio.sleep(0.3)
    assert len(handled) == 10
    effects = await _effects_per_event(engine)
    assert effects == dict.fromkeys(event_ids, 1)
    assert await scalar(engine, "SELECT count(*) FROM inbox") == 5
    assert await dead_letters_in(consumer, topology, "widgets") == 0


async def _resolve(value: bool | Awaitable[bool]) -> bool:
    return await value if not isinstance(value, bool) else value


async def _effects_per_event(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.text(
                "SELECT split_part(id, ':', 2) AS event_id, count(*) FROM widget "
                "WHERE id LIKE 'copy:%' GROUP BY 1"
            )
        )
        return {event_id: n for event_id, n in rows}


# --------------------------------------------------------------------------------------------
# The delivery policy: dead-letter at once, retry, give up after the limit
# --------------------------------------------------------------------------------------------


async def declare_dead_letters(broker: RabbitBroker, topology: Topology) -> None:
    """What `Runtime.lifespan` does before `broker.start()`: exchanges and one DLQ per queue."""
    await broker.connect()
    await broker.declare_exchange(topology.events)
    dlx = await broker.declare_exchange(topology.dead_letters)
    for purpose in QUEUES:
        name = topology.queue_name(SERVICE, purpose)
        dlq = await broker.declare_queue(topology.dead_letter_queue(name))
        await dlq.bind(dlx, routing_key=name)


async def dead_letters_in(broker: RabbitBroker, topology: Topology, purpose: str) -> int:
    dlq = topology.dead_letter_queue(topology.queue_name(SERVICE, purpose))
    queue = await broker.declare_queue(dlq)
    declared = await queue.declare()
    return int(declared.message_count or 0)


class Thing(Contract):
    thing_id: str = Field(min_length=1)
    quantity: int = Field(gt=0)
    mode: Literal["ok", "fail_once", "always_fail", "outage"] = "ok"


@dataclass
class PolicyConsumer:
    """A real subscriber on `<ns>.testsvc.p` with its DLQ, and what its handler saw."""

    queue_name: str
    dead_letters: Recorder
    attempts: Counter[str]
    publish: Callable[..., Awaitable[None]]


@pytest.fixture
async def policy_consumer(
    uow: WidgetUow,
    new_broker: Callable[[], RabbitBroker],
    topology: Topology,
    channel: AbstractChannel,
) -> PolicyConsumer:
    broker = new_broker()
    attempts: Counter[str] = Counter()

    @broker.subscriber(queue_for(topology, "p"), topology.events)
    async def on_thing(event: Envelope[Thing], msg: RabbitMessage) -> None:
        attempts[msg.message_id] += 1
        if event.data.mode == "always_fail":
            raise RuntimeError("the widget press is jammed")
        if event.data.mode == "fail_once" and attempts[msg.message_id] == 1:
            raise RuntimeError("a glitch")
        if event.data.mode == "outage" and attempts[msg.message_id] <= OUTAGE_ATTEMPTS:
            raise ConnectionRefusedError("database restarting")
        await handle_widget_message(uow, "p", msg.message_id)

    await declare_dead_letters(broker, topology)
    await broker.start()
    queue_name = topology.queue_name(SERVICE, "p")
    dlq = await channel.declare_queue(topology.dead_letter_queue(queue_name).name, passive=True)
    exchange = await channel.get_exchange(topology.events.name)

    async def publish(body: bytes | dict[str, Any], *, message_id: str,
                      content_type: str = "application/json", replayed: bool = False) -> None:
        if isinstance(body, dict) and "event_id" in body:
            # The wire contract: AMQP message_id = the envelope's event_id.
            body = {**body, "event_id": message_id}
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        # A replay (`spine dlq replay`) goes straight to the queue through the default exchange.
        to, routing_key = (
            (channel.default_exchange, queue_name) if replayed else (exchange, "t.thing")
        )
        await to.publish(
            aio_pika.Message(raw, content_type=content_type, message_id=message_id,
                             correlation_id=str(uuid.uuid4())),
            routing_key=routing_key,
        )

    return PolicyConsumer(queue_name, await Recorder(dlq).start(), attempts, publish)


# Message ids of envelopes must be their event ids, which are UUIDs: these name them.
ID = {name: str(uuid.uuid5(uuid.NAMESPACE_URL, name))
      for name in ("bad-data-1", "jammed-1", "flaky-1", "outage-1")}


def thing(**data: Any) -> dict[str, Any]:
    return new_envelope(type="t.thing", producer="test", data=data, actor=ACTOR)


def assert_dead_lettered_at_first_delivery(message: AbstractIncomingMessage) -> None:
    """A quorum queue stamps `x-delivery-count` on every redelivery; the copy keeps the headers."""
    headers = message.headers or {}
    assert "x-delivery-count" not in headers, f"retried before dead-lettering: {headers}"
    assert not reason_of(message).startswith("gave up"), reason_of(message)


def reason_of(message: AbstractIncomingMessage) -> str:
    reason = (message.headers or {}).get(ERROR_HEADER)
    assert isinstance(reason, str) and reason, f"no {ERROR_HEADER} header: {message.headers}"
    return reason


async def test_a_body_that_is_not_json_is_dead_lettered_at_once_with_its_reason(
    policy_consumer: PolicyConsumer,
) -> None:
    await policy_consumer.publish(b'{"event_id": "oops', message_id="not-json-1")

    [dead] = await policy_consumer.dead_letters.wait_for(1)
    assert dead.message_id == "not-json-1"
    assert dead.body == b'{"event_id": "oops'
    assert reason_of(dead).startswith("JSONDecodeError: "), reason_of(dead)
    assert_dead_lettered_at_first_delivery(dead)
    assert (dead.headers or {}).get(QUEUE_HEADER) == policy_consumer.queue_name
    assert policy_consumer.attempts["not-json-1"] == 0, "the handler must never see it"
    await policy_consumer.dead_letters.assert_no_more_than(1, settle=0.3)


async def test_a_replayed_message_that_is_still_broken_returns_to_its_own_queues_dead_letters(
    policy_consumer: PolicyConsumer,
) -> None:
    await policy_consumer.publish(b"still not json", message_id="replayed-1", replayed=True)

    [dead] = await policy_consumer.dead_letters.wait_for(1)
    assert dead.message_id == "replayed-1"
    assert reason_of(dead).startswith("JSONDecodeError: "), reason_of(dead)
    assert (dead.headers or {}).get(QUEUE_HEADER) == policy_consumer.queue_name


async def test_a_body_that_breaks_the_envelope_contract_is_dead_lettered_at_once_with_its_reason(
    policy_consumer: PolicyConsumer,
) -> None:
    await policy_consumer.publish(thing(thing_id="t-1", quantity=0), message_id=ID["bad-data-1"])
    broken = thing(thing_id="t-2", quantity=1)
    del broken["event_id"]
    await policy_consumer.publish(broken, message_id="bad-envelope-1")

    dead = {m.message_id: m for m in await policy_consumer.dead_letters.wait_for(2)}
    assert set(dead) == {ID["bad-data-1"], "bad-envelope-1"}
    bad_data = reason_of(dead[ID["bad-data-1"]])
    assert bad_data.startswith("contract violation: ") and "quantity" in bad_data, bad_data
    bad_envelope = reason_of(dead["bad-envelope-1"])
    assert bad_envelope.startswith("contract violation: ") and "event_id" in bad_envelope
    for message in dead.values():
        assert_dead_lettered_at_first_delivery(message)
    assert sum(policy_consumer.attempts.values()) == 0, "the handler must never see them"


async def test_a_handler_that_keeps_failing_is_dead_lettered_after_its_retry_limit(
    policy_consumer: PolicyConsumer, engine: AsyncEngine
) -> None:
    await policy_consumer.publish(thing(thing_id="t-1", quantity=1, mode="always_fail"),
                                  message_id=ID["jammed-1"])

    [dead] = await policy_consumer.dead_letters.wait_for(1, timeout=15)
    assert dead.message_id == ID["jammed-1"]
    reason = reason_of(dead)
    assert reason.startswith(f"gave up after {RETRY_LIMIT} attempts"), reason
    assert "the widget press is jammed" in reason
    assert policy_consumer.attempts[ID["jammed-1"]] == RETRY_LIMIT
    # Retried in the process, never requeued: the broker's own count stays at the first delivery.
    assert "x-delivery-count" not in (dead.headers or {})
    await policy_consumer.dead_letters.assert_no_more_than(1, settle=0.5)
    assert await scalar(engine, "SELECT count(*) FROM widget") == 0


async def test_a_handler_that_fails_once_then_succeeds_has_one_effect_and_no_dead_letter(
    policy_consumer: PolicyConsumer, engine: AsyncEngine
) -> None:
    await policy_consumer.publish(thing(thing_id="t-1", quantity=1, mode="fail_once"),
                                  message_id=ID["flaky-1"])

    await eventually(lambda: scalar(engine, "SELECT count(*) = 1 FROM widget"))
    await policy_consumer.dead_letters.assert_no_more_than(0, settle=0.8)
    assert policy_consumer.attempts[ID["flaky-1"]] == 2
    assert await scalar(engine, "SELECT count(*) FROM widget") == 1


OUTAGE_ATTEMPTS = 3 * (DELIVERY_LIMIT + RETRY_LIMIT)


async def test_a_message_whose_dependency_is_down_is_held_past_every_limit_and_then_handled(
    policy_consumer: PolicyConsumer, engine: AsyncEngine
) -> None:
    await policy_consumer.publish(thing(thing_id="t-1", quantity=1, mode="outage"),
                                  message_id=ID["outage-1"])

    await eventually(lambda: scalar(engine, "SELECT count(*) = 1 FROM widget"), timeout=30)
    assert policy_consumer.attempts[ID["outage-1"]] == OUTAGE_ATTEMPTS + 1
    await policy_consumer.dead_letters.assert_no_more_than(0, settle=0.5)


async def test_the_queue_itself_dead_letters_a_rejected_message_and_one_past_its_delivery_limit(
    broker: RabbitBroker, topology: Topology, channel: AbstractChannel, rabbit_janitor: Any
) -> None:
    # The broker's own safety net, for when a consumer dies before it can dead-letter.
    queue_def = topology.queue("testsvc", "raw", "r.#")
    rabbit_janitor.queue(queue_def.name)
    rabbit_janitor.queue(topology.dead_letter_queue(queue_def.name).name)
    declared = await broker.declare_queue(queue_def)
    await declared.bind(topology.events.name, routing_key="r.#")
    dlx = await broker.declare_exchange(topology.dead_letters)
    dlq = await broker.declare_queue(topology.dead_letter_queue(queue_def.name))
    await dlq.bind(dlx, routing_key=queue_def.name)
    dead_letters = await Recorder(
        await channel.declare_queue(dlq.name, passive=True)
    ).start()

    exchange = await channel.get_exchange(topology.events.name)
    for message_id in ("rejected-1", "poison-1"):
        await exchange.publish(aio_pika.Message(b"{}", message_id=message_id), routing_key="r.x")
    queue = await channel.declare_queue(queue_def.name, passive=True)

    first = await _get(queue)
    assert first.message_id == "rejected-1"
    await first.reject(requeue=False)

    deliveries = 0
    while (message := await queue.get(no_ack=False, fail=False, timeout=5)) is not None:
        assert message.message_id == "poison-1"
        deliveries += 1
        assert deliveries <= DELIVERY_LIMIT + 1, "the queue ignores its x-delivery-limit"
        await message.nack(requeue=True)
        await asyncio.sleep(0.05)  # let the queue dead-letter before the next basic.get

    dead = {m.message_id: m for m in await dead_letters.wait_for(2)}
    assert _death_reason(dead["rejected-1"]) == "rejected"
    assert _death_reason(dead["poison-1"]) == "delivery_limit"
    assert deliveries >= DELIVERY_LIMIT


async def _get(queue: AbstractQueue) -> AbstractIncomingMessage:
    for _ in range(50):
        message = await queue.get(no_ack=False, fail=False)
        if message is not None:
            return message
        await asyncio.sleep(0.05)
    raise AssertionError(f"nothing arrived on {queue.name}")


def _death_reason(message: AbstractIncomingMessage) -> str:
    deaths = (message.headers or {}).get("x-death")
    assert isinstance(deaths, list) and deaths, f"no x-death header: {message.headers}"
    first = deaths[0]
    assert isinstance(first, dict), deaths
    reason = first["reason"]
    return reason.decode() if isinstance(reason, bytes) else str(reason)


# --------------------------------------------------------------------------------------------
# The audit log
# --------------------------------------------------------------------------------------------


async def test_the_audit_log_refuses_update_delete_and_truncate(
    uow: WidgetUow, engine: AsyncEngine
) -> None:
    await make_widget(uow, "w-1")
    for statement in (
        "UPDATE audit_log SET reason = 'rewritten'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ):
        with pytest.raises(DBAPIError, match="audit_log is append-only"):
            async with engine.begin() as conn:
                await conn.execute(sa.text(statement))

    async with engine.connect() as conn:
        [row] = (await conn.execute(sa.select(AUDIT))).all()
    assert (row.entity_id, row.reason) == ("w-1", None)
