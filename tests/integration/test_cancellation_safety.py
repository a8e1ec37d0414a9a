"""A cancelled unit of work (or relay pass) never leaves a pooled connection inside a transaction.

aiormq cancels every in-flight consumer task when the broker connection closes. Whatever await
the cancellation lands on — waiting for a connection, BEGIN, a statement, the plumbing rows,
COMMIT — the next units of work on the same pool must commit for real. The database's replies
come through `DelayingProxy`, so each await is one the test can land a cancellation on.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aio_pika
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.contracts.envelope import Actor
from shared.db.engine import make_engine
from shared.messaging.relay import OutboxRelay
from shared.messaging.topology import Topology
from tests.faults import DelayingProxy
from tests.integration.widget_schema import (
    OUTBOX,
    WIDGET,
    WidgetUow,
    create_schema,
    widget_unit_of_work,
)

ACTOR = Actor(id="u-1042", role="planner")
REPLY_DELAY = 0.3  # the server's replies arrive this late while a cancellation is being aimed
CANCEL_AFTER = 0.1  # how long after the client sent the awaited bytes the task is cancelled


@pytest.fixture
async def database_url(databases: Callable[[str], Awaitable[str]]) -> str:
    url = await databases("cancel")
    engine = make_engine(url, pool_size=1, service="cancel-setup")
    try:
        async with engine.begin() as conn:
            await conn.run_sync(create_schema)
    finally:
        await engine.dispose()
    return url


@pytest.fixture
async def proxy(database_url: str) -> AsyncIterator[DelayingProxy]:
    proxy = await DelayingProxy.for_url(database_url).start()
    yield proxy
    await proxy.close()


@pytest.fixture
def app_name() -> str:
    """The `application_name` of the pool under test, to find its sessions in pg_stat_activity."""
    return f"cancel-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def pooled(proxy: DelayingProxy, database_url: str, app_name: str) -> AsyncIterator[AsyncEngine]:
    """A pool of ONE connection, reached through the proxy: every unit of work shares it."""
    engine = make_engine(proxy.url(database_url), pool_size=1, service=app_name)
    async with engine.connect() as conn:  # connect (and introspect types) before any delay
        await conn.execute(sa.text("SELECT 1"))
    yield engine
    await engine.dispose()


@pytest.fixture
async def observer(database_url: str) -> AsyncIterator[AsyncEngine]:
    """A second engine straight to the server: it sees only what really committed."""
    engine = make_engine(database_url, pool_size=1, service="cancel-observer")
    yield engine
    await engine.dispose()


async def make_widget(uow: WidgetUow, widget_id: str, *, inbox: bool = True,
                      hold: asyncio.Event | None = None, reached: asyncio.Event | None = None) -> None:
    """A consumer's unit of work: inbox row, business row, audit row and event, one commit."""
    async with uow.begin(
        actor=ACTOR, inbox=("cancel-test", widget_id) if inbox else None
    ) as tx:
        await tx.conn.execute(sa.insert(WIDGET).values(id=widget_id, n=1))
        if reached is not None:
            reached.set()
        if hold is not None:
            await hold.wait()
        tx.record(action="widget.made", entity_type="widget", entity_id=widget_id, to_state="made")
        tx.emit("widget.made", {"widget_id": widget_id})


async def committed_widgets(observer: AsyncEngine) -> set[str]:
    async with observer.connect() as conn:
        return set((await conn.execute(sa.select(WIDGET.c.id))).scalars())


async def sessions_in_transaction(observer: AsyncEngine, app_name: str) -> list[str]:
    async with observer.connect() as conn:
        rows = await conn.execute(
            sa.text("SELECT state FROM pg_stat_activity WHERE application_name = :app "
                    "AND state LIKE 'idle in transaction%'"),
            {"app": f"spine-{app_name}"},
        )
        return list(rows.scalars())


async def cancel_when_sent(proxy: DelayingProxy, marker: bytes, task: asyncio.Task[Any]) -> None:
    """Cancel `task` CANCEL_AFTER seconds after the client sent `marker` (its reply is still due)."""
    sent = proxy.sent(marker)
    proxy.delay = REPLY_DELAY
    await asyncio.wait_for(sent.wait(), 10)
    await asyncio.sleep(CANCEL_AFTER)
    assert not task.done(), f"the task finished before it could be cancelled at {marker!r}"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(REPLY_DELAY)  # let the late reply reach the driver, as it would in life
    proxy.delay = 0.0


async def assert_pool_commits_for_real(
    uow: WidgetUow, observer: AsyncEngine, app_name: str, cancelled: str | None
) -> None:
    """Three more units of work on the same pool all commit; no session is left in a transaction."""
    after = [f"after-{i}" for i in range(3)]
    for widget_id in after:
        await make_widget(uow, widget_id)
    assert not await sessions_in_transaction(observer, app_name), (
        "a pooled connection is still inside a transaction"
    )
    committed = await committed_widgets(observer)
    assert set(after) <= committed, f"acknowledged work never committed: {set(after) - committed}"
    if cancelled is not None:
        assert cancelled not in committed, "the cancelled unit of work committed its effect"


async def test_a_unit_of_work_cancelled_while_awaiting_begin_leaves_the_pool_committing_for_real(
    pooled: AsyncEngine, proxy: DelayingProxy, observer: AsyncEngine, app_name: str
) -> None:
    uow = widget_unit_of_work(pooled, "cancel")
    await make_widget(uow, "warm-up")

    task = asyncio.create_task(make_widget(uow, "cancelled"))
    await cancel_when_sent(proxy, b"BEGIN", task)

    await assert_pool_commits_for_real(uow, observer, app_name, cancelled="cancelled")


# (what the unit of work awaits when it is cancelled, the bytes the client sends then)
AWAITS = {
    "BEGIN": b"BEGIN",
    "the inbox row": b"INSERT INTO inbox",
    "a statement of the handler": b"INSERT INTO widget",
    "the audit and outbox rows": b"INSERT INTO audit_log",
    "COMMIT": b"COMMIT",
}


@pytest.mark.parametrize("awaiting", list(AWAITS))
async def test_a_unit_of_work_cancelled_at_any_await_leaves_no_connection_in_a_transaction(
    awaiting: str, pooled: AsyncEngine, proxy: DelayingProxy, observer: AsyncEngine, app_name: str
) -> None:
    # No warm-up unit of work: the first time a statement runs on a connection its text is sent
    # (a Parse message), which is what the proxy recognises.
    uow = widget_unit_of_work(pooled, "cancel")
    task = asyncio.create_task(make_widget(uow, "cancelled"))
    await cancel_when_sent(proxy, AWAITS[awaiting], task)

    # Cancelled during COMMIT, the server may have committed already: the message was not acked,
    # so its redelivery meets the inbox row. Everywhere else, nothing of it may remain.
    cancelled = None if awaiting == "COMMIT" else "cancelled"
    await assert_pool_commits_for_real(uow, observer, app_name, cancelled=cancelled)


async def test_a_unit_of_work_cancelled_between_statements_leaves_no_connection_in_a_transaction(
    pooled: AsyncEngine, observer: AsyncEngine, app_name: str
) -> None:
    uow = widget_unit_of_work(pooled, "cancel")
    reached, hold = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(make_widget(uow, "cancelled", reached=reached, hold=hold))
    await asyncio.wait_for(reached.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    await assert_pool_commits_for_real(uow, observer, app_name, cancelled="cancelled")


async def test_a_unit_of_work_cancelled_while_waiting_for_a_pooled_connection_harms_nobody(
    pooled: AsyncEngine, observer: AsyncEngine, app_name: str
) -> None:
    uow = widget_unit_of_work(pooled, "cancel")
    reached, hold = asyncio.Event(), asyncio.Event()
    holder = asyncio.create_task(make_widget(uow, "holder", reached=reached, hold=hold))
    await asyncio.wait_for(reached.wait(), 10)
    waiter = asyncio.create_task(make_widget(uow, "cancelled"))
    await asyncio.sleep(0.2)  # the pool has one connection: the waiter is waiting for it
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    hold.set()
    await holder

    await assert_pool_commits_for_real(uow, observer, app_name, cancelled="cancelled")
    assert "holder" in await committed_widgets(observer)


RELAY_AWAITS = {"BEGIN": b"BEGIN", "the claim": b"FOR UPDATE SKIP LOCKED",
                "marking the rows sent": b"UPDATE outbox"}


@pytest.mark.parametrize("awaiting", list(RELAY_AWAITS))
async def test_a_relay_pass_cancelled_at_any_await_leaves_no_connection_in_a_transaction(
    awaiting: str, pooled: AsyncEngine, proxy: DelayingProxy, observer: AsyncEngine,
    app_name: str, servers: Any, namespace: str, rabbit_janitor: Any,
) -> None:
    topology = Topology(namespace=namespace)
    connection = await aio_pika.connect(servers.amqp_url)
    relay = OutboxRelay(pooled, servers.amqp_url, topology, poll_interval_s=30.0)
    try:
        channel = await connection.channel()
        await channel.declare_exchange(
            topology.events.name, aio_pika.ExchangeType.TOPIC, durable=True,
            arguments=topology.events_arguments)
        queue = await channel.declare_queue(
            rabbit_janitor.queue(f"{namespace}.probe"), exclusive=True)
        await queue.bind(topology.events.name, routing_key="widget.#")
        await make_widget(widget_unit_of_work(observer, "cancel"), "to-relay", inbox=False)

        task = asyncio.create_task(relay.drain())
        await cancel_when_sent(proxy, RELAY_AWAITS[awaiting], task)
        # Whether or not it was published, the row was not marked sent: it goes out again
        # (the consumers' inboxes absorb the duplicate), never zero times.
        assert await unsent_events(observer) == 1

        uow = widget_unit_of_work(pooled, "cancel")
        await assert_pool_commits_for_real(uow, observer, app_name, cancelled=None)
        assert await relay.drain() == 4
        assert await unsent_events(observer) == 0
        assert not await sessions_in_transaction(observer, app_name)
    finally:
        await relay.close()
        await connection.close()


async def unsent_events(observer: AsyncEngine) -> int:
    async with observer.connect() as conn:
        query = sa.select(sa.func.count()).select_from(OUTBOX).where(OUTBOX.c.sent_at.is_(None))
        return int((await conn.execute(query)).scalar_one())


async def test_a_pooled_session_left_inside_a_transaction_is_replaced_not_reused(
    pooled: AsyncEngine, observer: AsyncEngine, app_name: str
) -> None:
    # What any code that talks to the driver behind SQLAlchemy's back could do.
    async with pooled.connect() as conn:
        raw = await conn.get_raw_connection()
        await raw.driver_connection.execute("BEGIN")  # type: ignore[union-attr]

    await assert_pool_commits_for_real(widget_unit_of_work(pooled, "cancel"), observer, app_name,
                                       cancelled=None)
