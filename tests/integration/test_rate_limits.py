"""Intake rate limits on a real broker and database: the order service running in-process.

The service is built with low limits (a bucket refills once a minute, so a burst is decided by
its size alone). Submissions are real AMQP publishes on `<ns>.events` naming a `reply_to`
queue, as an outside system sends them; its answers are read from that queue, its dead letters
through `GET /dead-letters` (which takes nothing), and replays are `spine dlq replay`.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import httpx
import pytest

from services.order.config import Settings
from services.order.main import build
from shared.contracts.envelope import Actor, new_envelope
from shared.db.engine import asyncpg_dsn
from shared.messaging.permissions import broker_user
from shared.messaging.topology import Topology, declare_all, namespace_objects
from shared.tokens import JwtVerifier
from tests.conftest import RabbitJanitor, Servers, service_database

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SECRET = secrets.token_hex(32)
WAIT_S = 15.0
# mes may send 4 at once, webshop (the default) 3, each then one a minute; u-7 may post twice.
INTAKE_LIMITS = "default=1/min:3,mes=1/min:4"
HTTP_LIMITS = "u-7=1/min:2"
MES_LIMITED = ("rate limit exceeded: system mes is over its intake limit of 1/min (burst 4): "
               "send again later")
SHIP_TO = {"name": "Nordwerk GmbH", "street": "Hafenstr. 1", "city": "Bremen",
           "postal_code": "28195", "country": "DE"}
LINES = [{"line_no": 1, "product_id": "P-1", "quantity": "4", "uom": "EA"}]


def token(sub: str, *roles: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {JwtVerifier(SECRET).issue(sub, list(roles))}"}


def submission(system: str) -> dict[str, Any]:
    """An `ext.<system>.order.submitted` envelope with a fresh external_ref."""
    return new_envelope(
        type=f"ext.{system}.order.submitted", producer=system,
        actor=Actor(id=system, role="system"),
        data={"external_ref": f"RL-{uuid.uuid4().hex[:10]}", "customer_id": "C-1",
              "requested_ship_date": "2026-12-01", "priority": "normal", "ship_to": SHIP_TO,
              "lines": LINES, "confirmed": False})


@dataclass
class Intake:
    """The running order service, its database, and an outside system's side of the broker."""

    servers: Servers
    namespace: str
    http: httpx.AsyncClient
    db: asyncpg.Connection
    channel: aio_pika.abc.AbstractChannel
    replies: aio_pika.abc.AbstractQueue

    @property
    def queue(self) -> str:
        return Topology(self.namespace).queue_name("order", "order-submitted")

    async def publish(self, envelope: dict[str, Any]) -> None:
        exchange = await self.channel.get_exchange(f"{self.namespace}.events")
        await exchange.publish(
            aio_pika.Message(json.dumps(envelope).encode(), content_type="application/json",
                             message_id=envelope["event_id"], reply_to=self.replies.name,
                             user_id=broker_user(self.servers.amqp_url),
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=envelope["type"], mandatory=True)

    async def answers(self, count: int) -> list[dict[str, Any]]:
        """The next `count` answers sent to the reply queue (fails if they do not come)."""
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + WAIT_S
        while len(found) < count:
            assert time.monotonic() < deadline, f"{len(found)} answers, not {count}: {found}"
            message = await self.replies.get(no_ack=True, fail=False)
            if message is None:
                await asyncio.sleep(0.05)
                continue
            found.append(json.loads(message.body))
        return found

    async def dead_letters(self, count: int) -> list[dict[str, Any]]:
        """The submissions queue's dead letters once there are `count` (read, not taken)."""
        deadline = time.monotonic() + WAIT_S
        while True:
            listed = await self.http.get("/dead-letters?limit=100",
                                         headers=token("u-ops", "ops"))
            assert listed.status_code == 200, listed.text
            [mine] = [q for q in listed.json()["queues"] if q["queue"] == self.queue]
            if mine["count"] >= count or time.monotonic() > deadline:
                assert mine["count"] == count, mine
                return list(mine["items"])
            await asyncio.sleep(0.1)

    async def orders(self, external_ref: str) -> int:
        return int(await self.db.fetchval(
            "SELECT count(*) FROM customer_order WHERE external_ref = $1", external_ref))

    async def until_order(self, external_ref: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while not await self.orders(external_ref):
            assert time.monotonic() < deadline, f"no order {external_ref}"
            await asyncio.sleep(0.05)

    async def spine(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`./spine` as an operator runs it, on this namespace."""
        env = {"PATH": "/usr/bin:/bin", "SPINE_AMQP_URL": self.servers.amqp_url,
               "SPINE_PG_URL": self.servers.pg_url, "SPINE_NAMESPACE": self.namespace,
               "SPINE_DB_PREFIX": self.namespace}
        return await asyncio.to_thread(
            subprocess.run, [str(ROOT / "spine"), *args], env=env, capture_output=True,
            text=True, timeout=120, cwd="/", stdin=subprocess.DEVNULL)

    async def metric(self, name: str, **labels: str) -> float:
        """One sample of this process's `/metrics` (0 when it has none yet)."""
        text = (await self.http.get("/metrics")).text
        wanted = name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
        return next((float(line.split()[-1]) for line in text.splitlines()
                     if line.startswith(wanted + " ")), 0.0)

    async def counts(self) -> dict[str, int]:
        tables = ("customer_order", "order_line", "outbox", "audit_log", "idempotency_key",
                  "inbox")
        return {t: await self.db.fetchval(f"SELECT count(*) FROM {t}") for t in tables}


@pytest.fixture
async def intake(
    servers: Servers, namespace: str, rabbit_janitor: RabbitJanitor,
) -> AsyncIterator[Intake]:
    async with service_database(servers.pg_url, "order", namespace) as password:
        settings = Settings(_env_file=None, pg_url=servers.pg_url,  # type: ignore[call-arg]
                            amqp_url=servers.amqp_url, db_prefix=namespace, namespace=namespace,
                            jwt_secret=SECRET, db_password=password,
                            intake_rate_limits=INTAKE_LIMITS, http_rate_limits=HTTP_LIMITS)
        for queue in namespace_objects(namespace)[0]:
            rabbit_janitor.queue(queue)
        connection = await aio_pika.connect(servers.amqp_url)
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            await declare_all(channel, Topology(namespace))
            replies = await channel.declare_queue(exclusive=True)
            _, app = build(settings)
            db = await asyncpg.connect(asyncpg_dsn(settings.database_url))
            try:
                async with app.router.lifespan_context(app), httpx.AsyncClient(
                    transport=httpx.ASGITransport(app), base_url="http://order"
                ) as http:
                    found = Intake(servers, namespace, http, db, channel, replies)
                    await _seed_replicas(found)
                    yield found
            finally:
                await db.close()
        finally:
            await connection.close()


async def _seed_replicas(intake: Intake) -> None:
    """Customer C-1 and product P-1, as erp_adapter publishes them (not rate limited)."""
    for kind, data in (("customer", {"customer_id": "C-1", "name": "C", "active": True}),
                       ("product", {"product_id": "P-1", "name": "P", "uom": "EA",
                                    "active": True})):
        envelope = new_envelope(type=f"erp.{kind}.upserted", producer="erp_adapter",
                                data={**data, "version": 1},
                                actor=Actor(id="erp_adapter", role="system"))
        exchange = await intake.channel.get_exchange(f"{intake.namespace}.events")
        await exchange.publish(
            aio_pika.Message(json.dumps(envelope).encode(), content_type="application/json",
                             message_id=envelope["event_id"],
                             user_id=broker_user(intake.servers.amqp_url)),
            routing_key=envelope["type"])
    deadline = time.monotonic() + WAIT_S
    while not await intake.db.fetchval(
            "SELECT (SELECT count(*) FROM customer) + (SELECT count(*) FROM product) = 2"):
        assert time.monotonic() < deadline, "replicas never arrived"
        await asyncio.sleep(0.05)


# ------------------------------------------------------------------------------ AMQP intake


async def test_a_burst_over_a_systems_limit_is_answered_and_dead_lettered_and_others_pass(
    intake: Intake,
) -> None:
    mes = [submission("mes") for _ in range(8)]
    webshop = [submission("webshop") for _ in range(3)]
    # Interleaved, and the first refused one sent twice (a sender's retry with the same id).
    burst = [*mes[:4], webshop[0], *mes[4:], *webshop[1:], mes[4]]
    for envelope in burst:
        await intake.publish(envelope)

    answers = await intake.answers(4 + 3 + 4)  # the copy of mes[4] was answered already

    def ref(envelope: dict[str, Any]) -> str:
        return str(envelope["data"]["external_ref"])

    by_ref = {(a["type"], a["data"]["external_ref"]): a["data"] for a in answers}
    assert {r for t, r in by_ref if t == "order.received"} == {ref(e) for e in mes[:4] + webshop}
    assert {r for t, r in by_ref if t == "order.rejected"} == {ref(e) for e in mes[4:]}
    for envelope in mes[4:]:
        rejected = by_ref["order.rejected", ref(envelope)]
        assert rejected["source"] == "mes" and rejected["reasons"] == [MES_LIMITED]
        assert await intake.orders(ref(envelope)) == 0
    for envelope in mes[:4] + webshop:
        assert await intake.orders(ref(envelope)) == 1

    dead = await intake.dead_letters(5)
    assert sorted(d["message_id"] for d in dead) == sorted(
        [e["event_id"] for e in mes[4:]] + [mes[4]["event_id"]])
    assert {d["reason"] for d in dead} == {MES_LIMITED}
    assert {d["routing_key"] for d in dead} == {"ext.mes.order.submitted"}
    refusals = {system: await intake.metric("spine_messages_rate_limited_total",
                                            queue=intake.queue, system=system)
                for system in ("mes", "webshop")}
    assert refusals == {"mes": 5, "webshop": 0}


async def test_a_replayed_rate_limited_submission_creates_its_order_exactly_once(
    intake: Intake,
) -> None:
    mes = [submission("mes") for _ in range(5)]
    for envelope in [*mes, mes[4]]:
        await intake.publish(envelope)
    await intake.answers(5)
    await intake.dead_letters(2)
    refused = mes[4]
    assert await intake.orders(refused["data"]["external_ref"]) == 0

    # mes's bucket is still empty (it refills once a minute): a replay is ops' call, not counted.
    ran = await intake.spine("dlq", "replay", "--queue", "order.order-submitted",
                             "--message-id", refused["event_id"])
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines()[-1].startswith("replayed 2 of 2"), ran.stdout

    [received] = await intake.answers(1)
    assert (received["type"], received["data"]["external_ref"]) == (
        "order.received", refused["data"]["external_ref"])
    await intake.until_order(refused["data"]["external_ref"])
    await intake.dead_letters(0)
    await asyncio.sleep(0.5)  # the second copy, had it an effect, would have had it by now
    assert await intake.orders(refused["data"]["external_ref"]) == 1
    assert await intake.db.fetchval(
        "SELECT count(*) FROM inbox WHERE message_id = $1 AND consumer = $2",
        refused["event_id"], intake.queue) == 1
    assert await intake.replies.get(no_ack=True, fail=False) is None  # one answer, not two


# ------------------------------------------------------------------------------ HTTP


async def test_a_caller_over_its_http_limit_gets_429_with_retry_after_and_nothing_is_written(
    intake: Intake,
) -> None:
    body = {"customer_id": "C-1", "requested_ship_date": "2026-12-01", "ship_to": SHIP_TO,
            "lines": LINES}
    for _ in range(2):
        placed = await intake.http.post("/orders", json=body, headers=token("u-7", "sales"))
        assert placed.status_code == 201, placed.text
    before = await intake.counts()
    counted = await intake.metric("spine_http_rate_limited_total", route="/orders", principal="u-7")

    refused = await intake.http.post("/orders", json=body, headers={
        **token("u-7", "sales"), "Idempotency-Key": "k-1"})

    assert refused.status_code == 429, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.json()["detail"].startswith(
        "rate limit exceeded: u-7 is over its limit of 1/min (burst 2): send again in ")
    await asyncio.sleep(0.3)  # nothing is on its way to the database either
    assert await intake.counts() == before
    assert await intake.metric("spine_http_rate_limited_total", route="/orders",
                               principal="u-7") == counted + 1
    # Another caller has its own limit (here none) and is not held back by u-7's.
    other = await intake.http.post("/orders", json=body, headers=token("u-8", "sales"))
    assert other.status_code == 201, other.text
