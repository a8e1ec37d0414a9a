"""Dead-letter operations on a real broker, against the notification service running in-process.

The notification service runs with its real subscribers, inbox and database on a namespace of
its own (the whole topology declared as `spine topology declare` does). Its dead letters are
made by its own delivery policy: an event published without a `user_id` is refused by the
provenance check and dead-lettered at once, with the reason. Then `spine dlq` (as a process)
and the `/dead-letters` routes list, show, replay and purge them.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import httpx
import pytest

from services.notification.config import Settings
from services.notification.main import build
from shared.contracts.envelope import Actor, new_envelope
from shared.db.engine import asyncpg_dsn
from shared.messaging import dead_letters
from shared.messaging.permissions import broker_user
from shared.messaging.topology import (
    ERROR_HEADER,
    QUEUE_HEADER,
    ROUTING_KEY_HEADER,
    Topology,
    declare_all,
    namespace_objects,
)
from shared.tokens import JwtVerifier
from tests.conftest import RabbitJanitor, Servers, service_database

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SECRET = secrets.token_hex(32)
OPS = {"Authorization": f"Bearer {JwtVerifier(SECRET).issue('u-ops', ['ops'])}"}
WAIT_S = 15.0
NO_USER_ID = "has no user_id"


def dispatch_shipped(dispatch_id: str) -> dict[str, Any]:
    """An event the notification rules name (its queue is bound to no other kind)."""
    return new_envelope(type="dispatch.shipped", producer="dispatch",
                        data={"dispatch_id": dispatch_id, "order_id": f"o-{dispatch_id}",
                              "version": 1, "status": "shipped"},
                        actor=Actor(id="dispatch", role="system"))


@dataclass
class Notification:
    """The running service, its database, and the test's own channel to the broker."""

    servers: Servers
    namespace: str
    http: httpx.AsyncClient
    db: asyncpg.Connection
    channel: aio_pika.abc.AbstractChannel

    @property
    def queue(self) -> str:
        return Topology(self.namespace).queue_name("notification", "events")

    @property
    def dlq(self) -> str:
        return f"{self.queue}.dlq"

    async def publish(self, envelope: dict[str, Any], *, vouched: bool) -> None:
        """On the events exchange; without a `user_id` the service dead-letters it at once."""
        exchange = await self.channel.get_exchange(f"{self.namespace}.events")
        await exchange.publish(
            aio_pika.Message(json.dumps(envelope).encode(), content_type="application/json",
                             message_id=envelope["event_id"],
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                             user_id=broker_user(self.servers.amqp_url) if vouched else None),
            routing_key=envelope["type"], mandatory=True)

    async def waiting(self, queue: str) -> int:
        declared = await self.channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)

    async def until_waiting(self, queue: str, count: int) -> None:
        deadline = time.monotonic() + WAIT_S
        while (now := await self.waiting(queue)) != count:
            assert time.monotonic() < deadline, f"{queue}: {now} waiting, not {count}"
            await asyncio.sleep(0.05)

    async def until(self, query: str, *args: Any) -> None:
        deadline = time.monotonic() + WAIT_S
        while not await self.db.fetchval(query, *args):
            assert time.monotonic() < deadline, f"timed out waiting for {query} {args}"
            await asyncio.sleep(0.05)

    async def effects(self, event_id: str) -> tuple[int, int]:
        """(observed_event rows, inbox rows) of one event: its effect, and its inbox record."""
        observed = await self.db.fetchval(
            "SELECT count(*) FROM observed_event WHERE event_id = $1::uuid", event_id)
        inbox = await self.db.fetchval(
            "SELECT count(*) FROM inbox WHERE message_id = $1", event_id)
        return observed, inbox

    async def spine(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`./spine` as an operator runs it (no terminal), on this namespace."""
        env = {"PATH": "/usr/bin:/bin", "SPINE_AMQP_URL": self.servers.amqp_url,
               "SPINE_PG_URL": self.servers.pg_url, "SPINE_NAMESPACE": self.namespace,
               "SPINE_DB_PREFIX": self.namespace}
        return await asyncio.to_thread(
            subprocess.run, [str(ROOT / "spine"), *args], env=env, capture_output=True,
            text=True, timeout=120, cwd="/", stdin=subprocess.DEVNULL)

    async def dead_letter(self, envelope: dict[str, Any], copies: int = 1) -> None:
        """Have the service itself dead-letter `envelope` (published unvouched) `copies` times."""
        before = await self.waiting(self.dlq)
        for _ in range(copies):
            await self.publish(envelope, vouched=False)
        await self.until_waiting(self.dlq, before + copies)


@pytest.fixture
async def notification(
    servers: Servers, namespace: str, rabbit_janitor: RabbitJanitor,
) -> AsyncIterator[Notification]:
    async with service_database(servers.pg_url, "notification", namespace) as password:
        settings = Settings(_env_file=None, pg_url=servers.pg_url,  # type: ignore[call-arg]
                            amqp_url=servers.amqp_url, db_prefix=namespace, namespace=namespace,
                            jwt_secret=SECRET, db_password=password)
        for queue in namespace_objects(namespace)[0]:
            rabbit_janitor.queue(queue)
        connection = await aio_pika.connect(servers.amqp_url)
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            await declare_all(channel, Topology(namespace))
            _, app = build(settings)
            db = await asyncpg.connect(asyncpg_dsn(settings.database_url))
            try:
                async with app.router.lifespan_context(app), httpx.AsyncClient(
                    transport=httpx.ASGITransport(app), base_url="http://notification"
                ) as http:
                    yield Notification(servers, namespace, http, db, channel)
            finally:
                await db.close()
        finally:
            await connection.close()


# ------------------------------------------------------------------------------ the CLI


async def test_spine_dlq_list_and_show_give_the_reason_and_take_nothing(
    notification: Notification,
) -> None:
    first, second = dispatch_shipped("d-1"), dispatch_shipped("d-2")
    await notification.dead_letter(first)
    await notification.dead_letter(second)

    listed = await notification.spine("dlq", "list", "--queue", "notification.events")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0] == f"{notification.dlq}: 2 dead letter(s)"
    assert lines[1].startswith(f"  {first['event_id']}  dispatch.shipped  at ")
    assert lines[2].startswith("    reason: ProvenanceError: provenance: ") and NO_USER_ID in lines[2]
    assert lines[4].startswith(f"  {second['event_id']}  dispatch.shipped")
    # Read again: nothing was taken, and the order is the same.
    again = await notification.spine("dlq", "list", "--queue", "notification.events")
    assert again.stdout.splitlines()[::4] == lines[::4]
    assert await notification.waiting(notification.dlq) == 2

    shown = await notification.spine("dlq", "show", "--queue", "notification.events",
                                     "--message-id", second["event_id"], "--json")
    assert shown.returncode == 0, shown.stderr
    detail = json.loads(shown.stdout)
    assert detail["message_id"] == second["event_id"]
    assert detail["original_queue"] == notification.queue
    assert detail["headers"][ROUTING_KEY_HEADER] == "dispatch.shipped"
    assert NO_USER_ID in detail["headers"][ERROR_HEADER] and detail["reason"] == \
        detail["headers"][ERROR_HEADER]
    assert json.loads(detail["body"]) == second
    assert await notification.waiting(notification.dlq) == 2

    missing = await notification.spine("dlq", "show", "--queue", "notification.events",
                                       "--message-id", "m-none")
    assert missing.returncode == 1 and f"no message m-none in {notification.dlq}" in missing.stderr


async def test_a_replay_goes_through_the_inbox_so_copies_of_one_message_have_one_effect(
    notification: Notification,
) -> None:
    # Two dead copies of one message (as at-least-once dead-lettering can leave), and one of a
    # message whose effect was committed already by an earlier, vouched-for delivery.
    twice, done = dispatch_shipped("d-1"), dispatch_shipped("d-2")
    await notification.dead_letter(twice, copies=2)
    await notification.publish(done, vouched=True)
    await notification.until("SELECT count(*) = 1 FROM observed_event WHERE event_id = $1::uuid",
                             done["event_id"])
    await notification.dead_letter(done)
    assert await notification.effects(twice["event_id"]) == (0, 0)

    ran = await notification.spine("dlq", "replay", "--queue", "notification.events", "--all",
                                   "--yes")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines()[-1] == f"replayed 3 of 3 from {notification.dlq}"

    await notification.until_waiting(notification.queue, 0)
    await notification.until("SELECT count(*) = 1 FROM observed_event WHERE event_id = $1::uuid",
                             twice["event_id"])
    await asyncio.sleep(0.5)  # the duplicates' turn: they must be acked with no effect
    assert await notification.effects(twice["event_id"]) == (1, 1)
    assert await notification.effects(done["event_id"]) == (1, 1)
    assert await notification.waiting(notification.queue) == 0
    assert await notification.waiting(notification.dlq) == 0, "a replay was dead-lettered again"


async def test_spine_dlq_purge_asks_first_and_says_how_many_it_deleted(
    notification: Notification,
) -> None:
    for n in range(3):
        await notification.dead_letter(dispatch_shipped(f"d-{n}"))

    unasked = await notification.spine("dlq", "purge", "--queue", "notification.events")
    assert unasked.returncode == 2
    assert unasked.stderr.strip() == (f"spine: error: delete all 3 dead letter(s) in "
                                      f"{notification.dlq} for good? — not confirmed; add --yes")
    assert await notification.waiting(notification.dlq) == 3

    purged = await notification.spine("dlq", "purge", "--queue", "notification.events", "--yes")
    assert purged.returncode == 0, purged.stderr
    assert purged.stdout.strip() == f"purged 3 dead letter(s) from {notification.dlq}"
    assert await notification.waiting(notification.dlq) == 0


# ------------------------------------------------------------------------------ HTTP


async def test_ops_lists_each_queues_dead_letters_with_their_reasons_over_http(
    notification: Notification,
) -> None:
    letters = [dispatch_shipped(f"d-{n}") for n in range(3)]
    for letter in letters:
        await notification.dead_letter(letter)

    listed = await notification.http.get("/dead-letters", headers=OPS, params={"limit": 2})
    assert listed.status_code == 200, listed.text
    [queue] = listed.json()["queues"]
    assert (queue["queue"], queue["dead_letter_queue"], queue["count"]) == (
        notification.queue, notification.dlq, 3)
    assert [item["message_id"] for item in queue["items"]] == [e["event_id"] for e in letters[:2]]
    for item in queue["items"]:
        assert item["reason"].startswith("ProvenanceError: ") and NO_USER_ID in item["reason"]
        assert (item["routing_key"], item["original_queue"]) == ("dispatch.shipped",
                                                                 notification.queue)
    again = await notification.http.get("/dead-letters", headers=OPS, params={"limit": 2})
    assert again.json() == listed.json(), "reading must neither take nor reorder"

    one = await notification.http.get(
        f"/dead-letters/{notification.queue}/{letters[2]['event_id']}", headers=OPS)
    assert one.status_code == 200, one.text
    assert one.json()["headers"][QUEUE_HEADER] == notification.queue
    assert json.loads(one.json()["body"]) == letters[2]
    unknown = await notification.http.get(f"/dead-letters/{notification.queue}/m-none",
                                          headers=OPS)
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/problem+json"
    foreign = await notification.http.get(
        f"/dead-letters/{notification.namespace}.order.order-submitted/m-1", headers=OPS)
    assert foreign.status_code == 404 and "consumes no queue" in foreign.json()["detail"]
    assert await notification.waiting(notification.dlq) == 3


async def test_ops_replays_one_dead_letter_over_http_and_it_has_its_effect_once(
    notification: Notification,
) -> None:
    wanted, other = dispatch_shipped("d-1"), dispatch_shipped("d-2")
    await notification.dead_letter(wanted, copies=2)
    await notification.dead_letter(other)
    url = f"/dead-letters/{notification.queue}/replay"

    neither = await notification.http.post(url, headers=OPS, json={})
    assert neither.status_code == 422, neither.text
    replayed = await notification.http.post(url, headers=OPS,
                                            json={"message_id": wanted["event_id"]})
    assert replayed.status_code == 200, replayed.text
    assert replayed.json() == {"queue": notification.queue, "not_replayed": [],
                               "replayed": [wanted["event_id"]] * 2}

    await notification.until("SELECT count(*) = 1 FROM observed_event WHERE event_id = $1::uuid",
                             wanted["event_id"])
    await notification.until_waiting(notification.queue, 0)
    assert await notification.effects(wanted["event_id"]) == (1, 1)
    assert await notification.effects(other["event_id"]) == (0, 0)
    assert await notification.waiting(notification.dlq) == 1  # the other one stayed
    gone = await notification.http.post(url, headers=OPS, json={"message_id": wanted["event_id"]})
    assert gone.status_code == 404


async def test_ops_purges_a_dead_letter_queue_over_http_only_when_confirmed_by_name(
    notification: Notification,
) -> None:
    for n in range(2):
        await notification.dead_letter(dispatch_shipped(f"d-{n}"))
    url = f"/dead-letters/{notification.queue}"

    unconfirmed = await notification.http.delete(url, headers=OPS)
    assert unconfirmed.status_code == 422
    wrong = await notification.http.delete(url, headers=OPS, params={"confirm": "yes"})
    assert wrong.status_code == 422 and "confirm" in wrong.json()["problems"][0]
    assert await notification.waiting(notification.dlq) == 2

    purged = await notification.http.delete(url, headers=OPS,
                                            params={"confirm": notification.queue})
    assert purged.status_code == 200, purged.text
    assert purged.json() == {"queue": notification.queue, "purged": 2}
    assert await notification.waiting(notification.dlq) == 0


# ------------------------------------------------------------------------------ reading


async def test_reading_a_dead_letter_queue_again_at_once_sees_every_message_in_its_order(
    servers: Servers, namespace: str, rabbit_janitor: RabbitJanitor,
) -> None:
    # The queue takes a closed channel's messages back a moment after the close is confirmed:
    # a read that did not wait for that would leave the next one an empty-looking queue.
    name = rabbit_janitor.queue(f"{namespace}.reading.dlq")
    connection = await aio_pika.connect(servers.amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
        for n in range(3):
            await channel.default_exchange.publish(
                aio_pika.Message(f"m-{n}".encode(), message_id=f"m-{n}"), routing_key=name)
        for _ in range(8):
            waiting, letters = await dead_letters.peek(connection, name, 10)
            assert (waiting, [letter.message_id for letter in letters]) == (
                3, ["m-0", "m-1", "m-2"])
        found = await dead_letters.find(connection, name, "m-1")
        assert found is not None and found.body == b"m-1"
        assert await dead_letters.count(connection, name) == 3
    finally:
        await connection.close()


async def test_a_dead_letter_that_names_another_queue_is_not_replayed_into_it(
    notification: Notification,
) -> None:
    # Only the delivery policy names the queue, always the DLQ's own; this one was put by hand.
    order_queue = Topology(notification.namespace).queue_name("order", "order-submitted")
    await notification.channel.default_exchange.publish(
        aio_pika.Message(b"{}", message_id="m-elsewhere", headers={
            ERROR_HEADER: "ContractViolation: x", QUEUE_HEADER: order_queue,
            ROUTING_KEY_HEADER: "ext.mes.order.submitted"}),
        routing_key=notification.dlq)

    replayed = await notification.http.post(f"/dead-letters/{notification.queue}/replay",
                                            headers=OPS, json={"all": True})
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["replayed"] == []
    assert replayed.json()["not_replayed"] == [
        f"m-elsewhere: it names another queue, {order_queue}"]
    assert await notification.waiting(notification.dlq) == 1
    assert await notification.waiting(order_queue) == 0
