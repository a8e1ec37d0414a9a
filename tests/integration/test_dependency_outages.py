"""A service rides out its database or its broker going away: nothing dead-lettered, nothing lost.

The notification service runs in this process with its database, or its broker, behind a
`DelayingProxy`. Cutting the proxy's connections and refusing new ones is what the service
sees when the server restarts, without disturbing any other test on the shared servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aio_pika
import asyncpg
import httpx
import pytest

from services.notification.config import Settings
from services.notification.main import build
from shared.contracts.envelope import Actor, new_envelope
from shared.messaging.permissions import broker_user
from shared.messaging.topology import CONSUMER_QUEUES, Topology
from shared.runtime import Runtime
from tests.conftest import Servers, service_database
from tests.faults import DelayingProxy

pytestmark = pytest.mark.integration

OUTAGE_S = 4.0  # longer than the database restart that dead-lettered orders before


@dataclass
class Service:
    """The notification service's settings, a direct database connection, a direct channel."""

    settings: Settings
    db: asyncpg.Connection
    channel: aio_pika.abc.AbstractChannel

    def queue(self, purpose: str, *, dead: bool = False) -> str:
        name = Topology(self.settings.namespace).queue_name("notification", purpose)
        return f"{name}.dlq" if dead else name

    async def waiting(self, purpose: str, *, dead: bool = False) -> int:
        queue = await self.channel.declare_queue(self.queue(purpose, dead=dead), passive=True)
        return int(queue.declaration_result.message_count or 0)

    async def publish_shipped(self, n: int) -> list[str]:
        exchange = await self.channel.get_exchange(f"{self.settings.namespace}.events")
        ids = []
        for _ in range(n):
            dispatch_id = str(uuid.uuid4())
            envelope = new_envelope(
                type="dispatch.shipped", producer="dispatch",
                data={"dispatch_id": dispatch_id, "order_id": f"o-{dispatch_id[:8]}",
                      "version": 1, "status": "shipped"},
                actor=Actor(id="dispatch", role="system"),
            )
            await exchange.publish(
                aio_pika.Message(json.dumps(envelope).encode(), content_type="application/json",
                                 message_id=envelope["event_id"],
                                 user_id=broker_user(self.settings.amqp_url),
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key="dispatch.shipped", mandatory=True,
            )
            ids.append(envelope["event_id"])
        return ids

    async def stored(self, ids: list[str]) -> int:
        return int(await self.db.fetchval(
            "SELECT count(*) FROM observed_event WHERE event_id = ANY($1::uuid[])", ids))


@pytest.fixture
async def proxies(servers: Servers) -> AsyncIterator[dict[str, DelayingProxy]]:
    made = {"pg": await DelayingProxy.for_url(servers.pg_url).start(),
            "amqp": await DelayingProxy.for_url(servers.amqp_url).start()}
    yield made
    for proxy in made.values():
        await proxy.close()


@pytest.fixture
async def new_service(
    monkeypatch: pytest.MonkeyPatch, servers: Servers, proxies: dict[str, DelayingProxy]
) -> AsyncIterator[Callable[..., Awaitable[Service]]]:
    """Settings for a notification service whose database or broker is behind a proxy."""
    unique = f"outage_{uuid.uuid4().hex[:8]}"
    made: list[Service] = []
    connection = await aio_pika.connect(servers.amqp_url)
    databases = contextlib.AsyncExitStack()

    async def make(*, through: str) -> Service:
        pg_url = proxies["pg"].url(servers.pg_url) if through == "pg" else servers.pg_url
        amqp_url = proxies["amqp"].url(servers.amqp_url) if through == "amqp" else servers.amqp_url
        # Created and migrated directly; the service logs in as its runtime role, maybe through
        # the proxy.
        password = await databases.enter_async_context(
            service_database(servers.pg_url, "notification", unique))
        for key, value in {"SPINE_PG_URL": pg_url, "SPINE_AMQP_URL": amqp_url,
                           "SPINE_DB_PREFIX": unique, "SPINE_NAMESPACE": unique,
                           "SPINE_DB_PASSWORD": password,
                           "SPINE_JWT_SECRET": secrets.token_hex(32)}.items():
            monkeypatch.setenv(key, value)
        settings = Settings()
        db = await asyncpg.connect(f"{servers.pg_url}/{settings.database_name}")
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        made.append(service := Service(settings, db, channel))
        return service

    yield make
    cleanup = await connection.channel()
    for service in made:
        await service.db.close()
        for purpose, _ in CONSUMER_QUEUES["notification"]:
            await cleanup.queue_delete(service.queue(purpose))
            await cleanup.queue_delete(service.queue(purpose, dead=True))
        for exchange in (f"{unique}.events", f"{unique}.dlx", f"{unique}.unrouted"):
            await cleanup.exchange_delete(exchange)
        await cleanup.queue_delete(f"{unique}.unrouted")
    await databases.aclose()
    await connection.close()


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[tuple[Runtime, httpx.AsyncClient]]:
    runtime, app = build(settings)
    async with runtime.lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://n") as client:
            yield runtime, client


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def readiness(client: httpx.AsyncClient) -> tuple[int, dict[str, Any]]:
    response = await client.get("/readyz")
    return response.status_code, response.json()["checks"]


async def test_a_database_outage_holds_messages_and_loses_or_dead_letters_none(
    new_service: Callable[..., Awaitable[Service]], proxies: dict[str, DelayingProxy]
) -> None:
    service = await new_service(through="pg")
    proxy = proxies["pg"]
    async with running(service.settings) as (_, client):
        before = await service.publish_shipped(20)
        await until(lambda: _equals(service.stored(before), 20))

        proxy.refusing = True
        proxy.cut()
        during = await service.publish_shipped(30)
        await asyncio.sleep(1.0)
        status, checks = await readiness(client)
        assert status == 503
        assert checks["database"].startswith("unreachable"), checks
        assert "held until a dependency is back" in checks["messages"], checks
        await asyncio.sleep(OUTAGE_S - 1.0)
        proxy.refusing = False

        await until(lambda: _equals(service.stored(during), 30))
        await until(lambda: _ready(client))
    assert await service.waiting("events") == 0
    assert await service.waiting("events", dead=True) == 0
    assert await service.db.fetchval("SELECT count(*) FROM observed_event") == 50
    assert await service.db.fetchval("SELECT count(*) FROM inbox") == 50


async def test_a_service_started_while_the_broker_is_down_waits_for_it_then_consumes(
    new_service: Callable[..., Awaitable[Service]], proxies: dict[str, DelayingProxy]
) -> None:
    service = await new_service(through="amqp")
    proxy = proxies["amqp"]
    proxy.refusing = True
    async with running(service.settings) as (runtime, client):
        status, checks = await readiness(client)
        assert status == 503
        assert checks["consumers"].startswith("waiting for the broker"), checks

        proxy.refusing = False
        await asyncio.wait_for(runtime.started(), timeout=30)
        ids = await service.publish_shipped(5)
        await until(lambda: _equals(service.stored(ids), 5))
        await until(lambda: _ready(client))


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def _ready(client: httpx.AsyncClient) -> bool:
    return (await client.get("/readyz")).status_code == 200
