"""The notification service against a real PostgreSQL and RabbitMQ: inbox, dead letters, API.

Each test gets its own database (`<unique>_notification`) and namespace, and removes the
database, its queues (with their dead-letter queues) and its exchanges at the end.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aio_pika
import asyncpg
import httpx
import pytest

from services.notification.config import Settings
from services.notification.main import build
from shared.auth import JwtVerifier
from shared.contracts.envelope import Actor, new_envelope
from shared.messaging.permissions import broker_user
from shared.messaging.topology import CONSUMER_QUEUES, ERROR_HEADER, Topology
from tests.conftest import Servers, service_database

pytestmark = pytest.mark.integration



@dataclass
class Notification:
    """One isolated notification service's settings, database and a channel to its broker."""

    settings: Settings
    db: asyncpg.Connection
    channel: aio_pika.abc.AbstractChannel

    @property
    def topology(self) -> Topology:
        return Topology(self.settings.namespace, self.settings.delivery_limit)

    def token(self, *roles: str) -> dict[str, str]:
        secret = self.settings.jwt_secret.get_secret_value()
        return {"Authorization": f"Bearer {JwtVerifier(secret).issue('u-test', list(roles))}"}

    async def publish(self, routing_key: str, body: bytes, message_id: str | None = None) -> None:
        exchange = await self.channel.get_exchange(f"{self.settings.namespace}.events")
        await exchange.publish(
            aio_pika.Message(body, content_type="application/json", message_id=message_id,
                             user_id=broker_user(self.settings.amqp_url),
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=routing_key,
            mandatory=True,
        )

    async def publish_event(self, envelope: dict[str, Any]) -> None:
        await self.publish(envelope["type"], json.dumps(envelope).encode(), envelope["event_id"])

    async def wait_for(self, query: str, *args: Any, timeout: float = 10.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not await self.db.fetchval(query, *args):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting for: {query} {args}")
            await asyncio.sleep(0.05)

    def queue(self, purpose: str) -> str:
        return self.topology.queue_name("notification", purpose)

    async def ready_messages(self, purpose: str, dead: bool = False) -> int:
        name = self.queue(purpose) + (".dlq" if dead else "")
        queue = await self.channel.declare_queue(name, passive=True)
        return int(queue.declaration_result.message_count or 0)

    @asynccontextmanager
    async def service(self) -> AsyncIterator[httpx.AsyncClient]:
        """The notification app running; leaving the block stops it gracefully."""
        runtime, app = build(self.settings)
        async with runtime.lifespan(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://n") as client:
                yield client


@pytest.fixture
async def notification(
    monkeypatch: pytest.MonkeyPatch, servers: Servers
) -> AsyncIterator[Notification]:
    async with isolated_notification(monkeypatch, servers) as made:
        yield made


@asynccontextmanager
async def isolated_notification(
    monkeypatch: pytest.MonkeyPatch, servers: Servers
) -> AsyncIterator[Notification]:
    """A notification service's settings on a fresh database and namespace, removed after."""
    unique = f"notiftest_{uuid.uuid4().hex[:8]}"
    for key, value in {
        "SPINE_PG_URL": servers.pg_url,
        "SPINE_AMQP_URL": servers.amqp_url,
        "SPINE_DB_PREFIX": unique,
        "SPINE_NAMESPACE": unique,
        "SPINE_JWT_SECRET": secrets.token_hex(32),
    }.items():
        monkeypatch.setenv(key, value)
    async with service_database(servers.pg_url, "notification", unique) as password:
        monkeypatch.setenv("SPINE_DB_PASSWORD", password)
        settings = Settings()  # type: ignore[call-arg]
        connection = await aio_pika.connect(settings.amqp_url)
        try:
            db = await asyncpg.connect(f"{settings.pg_url}/{settings.database_name}")
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            try:
                yield Notification(settings, db, channel)
            finally:
                await db.close()
                # A fresh channel: a failed assertion may have closed the test's one.
                cleanup = await connection.channel()
                for purpose, _ in CONSUMER_QUEUES["notification"]:
                    name = Topology(unique).queue_name("notification", purpose)
                    await cleanup.queue_delete(name)
                    await cleanup.queue_delete(f"{name}.dlq")
                for exchange in (f"{unique}.events", f"{unique}.dlx"):
                    await cleanup.exchange_delete(exchange)
        finally:
            await connection.close()


def dispatch_shipped(
    dispatch_id: str, order_id: str, correlation_id: uuid.UUID | None = None
) -> dict[str, Any]:
    return new_envelope(
        type="dispatch.shipped",
        producer="dispatch",
        data={"dispatch_id": dispatch_id, "order_id": order_id, "version": 1,
              "status": "shipped"},
        actor=Actor(id="dispatch", role="system"),
        correlation_id=correlation_id,
    )


# ------------------------------------------------------------------------------------------


async def test_a_message_delivered_twice_is_stored_once(notification: Notification) -> None:
    event = dispatch_shipped("d-1", "o-1")
    later = dispatch_shipped("d-2", "o-2")
    async with notification.service():
        await notification.publish_event(event)
        await notification.publish_event(event)  # the same message again, as a redelivery
        await notification.publish_event(later)
        await notification.wait_for(
            "SELECT count(*) = 2 FROM observed_event WHERE event_id = ANY($1::uuid[])",
            [event["event_id"], later["event_id"]],
        )
    # Stopped gracefully: every delivery was handled and acked, none waits or was dead-lettered.
    assert await notification.ready_messages("events") == 0
    assert await notification.ready_messages("events", dead=True) == 0
    rows = await notification.db.fetch(
        "SELECT event_id::text, type, aggregate_type, aggregate_id, aggregate_version, "
        "correlation_id::text FROM observed_event ORDER BY aggregate_id"
    )
    assert [dict(r) for r in rows] == [
        {"event_id": e["event_id"], "type": "dispatch.shipped", "aggregate_type": "dispatch",
         "aggregate_id": d, "aggregate_version": 1, "correlation_id": e["correlation_id"]}
        for e, d in ((event, "d-1"), (later, "d-2"))
    ]
    inbox = await notification.db.fetch("SELECT consumer, message_id FROM inbox ORDER BY 1, 2")
    consumer = notification.queue("events")
    assert [tuple(r) for r in inbox] == sorted(
        [(consumer, event["event_id"]), (consumer, later["event_id"])]
    )


async def test_a_message_that_breaks_the_envelope_goes_to_the_dead_letter_queue_with_a_reason(
    notification: Notification,
) -> None:
    async with notification.service():
        await notification.publish("dispatch.shipped", b"this is not json", "garbage-1")
        await notification.publish("dispatch.shipped", b'{"type": "dispatch.shipped"}', "garbage-2")
        dlq = await notification.channel.declare_queue(
            f"{notification.queue('events')}.dlq", passive=True
        )
        dead: dict[str, aio_pika.abc.AbstractIncomingMessage] = {}
        deadline = asyncio.get_running_loop().time() + 10
        while len(dead) < 2 and asyncio.get_running_loop().time() < deadline:
            message = await dlq.get(no_ack=True, fail=False)
            if message is None:
                await asyncio.sleep(0.05)
            else:
                dead[str(message.message_id)] = message
    assert sorted(dead) == ["garbage-1", "garbage-2"]
    assert dead["garbage-1"].body == b"this is not json"
    reasons = {k: str((m.headers or {}).get(ERROR_HEADER, "")) for k, m in dead.items()}
    assert all(reasons.values()), reasons
    assert "contract violation" in reasons["garbage-2"]
    assert "event_id" in reasons["garbage-2"]
    assert await notification.db.fetchval("SELECT count(*) FROM observed_event") == 0
    assert await notification.db.fetchval("SELECT count(*) FROM inbox") == 0


async def test_ops_and_supervisors_can_list_observed_events_by_correlation_and_type(
    notification: Notification,
) -> None:
    event = dispatch_shipped("d-7", "o-7")
    released = new_envelope(
        type="dispatch.corrected",
        producer="dispatch",
        data={"dispatch_id": "d-7", "order_id": "o-7", "version": 2, "status": "shipped"},
        actor=Actor(id="u-1", role="planner"),
        correlation_id=uuid.UUID(event["correlation_id"]),
    )
    unrelated = dispatch_shipped("d-8", "o-8")
    async with notification.service() as client:
        for envelope in (unrelated, released, event):  # arrival order is not history
            await notification.publish_event(envelope)
        await notification.wait_for("SELECT count(*) = 3 FROM observed_event")

        journey = await client.get("/events", headers=notification.token("ops"),
                                   params={"correlation_id": event["correlation_id"],
                                           "order": "asc"})
        assert journey.status_code == 200, journey.text
        assert [(e["type"], e["aggregate_type"], e["aggregate_id"]) for e in journey.json()] == [
            ("dispatch.shipped", "dispatch", "d-7"), ("dispatch.corrected", "dispatch", "d-7")
        ]
        by_type = await client.get("/events", headers=notification.token("supervisor"),
                                   params={"type": "dispatch.shipped", "limit": 1})
        assert [e["event_id"] for e in by_type.json()] == [unrelated["event_id"]]
        for headers, status in (({}, 401), (notification.token("sales"), 403)):
            assert (await client.get("/events", headers=headers)).status_code == status


async def test_the_queue_binds_the_events_the_rules_name_and_no_other(
    notification: Notification,
) -> None:
    async with notification.service():
        # Bound at start from the rules: every `on`, the order service's order.rejected too.
        rejected = new_envelope(type="order.rejected", producer="order", data={
            "external_ref": "PO-1", "source": "mes", "reasons": ["no lines"]},
            actor=Actor(id="order", role="system"))
        await notification.publish_event(rejected)
        await notification.wait_for("SELECT count(*) = 1 FROM observed_event WHERE type = $1",
                                    "order.rejected")
        # An event no rule names is routed to no queue of this service (no alternate exchange
        # in this namespace: the mandatory publish comes back).
        created = new_envelope(type="dispatch.created", producer="dispatch", data={
            "dispatch_id": "d-1", "order_id": "o-1", "version": 1, "status": "pending"},
            actor=Actor(id="dispatch", role="system"))
        with pytest.raises(aio_pika.exceptions.PublishError, match="NO_ROUTE"):
            await notification.publish_event(created)


# --------------------------------------------------------------------------- rules and inbox


def exception_opened(owner: str, *, reason_code: str = "stock_shortage",
                     blocking: bool = True) -> dict[str, Any]:
    return new_envelope(type="dispatch.exception.opened", producer="dispatch", data={
        "exception_id": str(uuid.uuid4()), "dispatch_id": "d-9", "order_id": "o-9",
        "version": 2, "status": "open", "owner": owner, "reason_code": reason_code,
        "blocking": blocking, "due_at": "2027-01-01T12:00:00+00:00",
        "description": "bin empty"}, actor=Actor(id="u-planner", role="planner"))


async def test_an_exception_opened_tells_its_owner_once_in_the_inbox_even_when_redelivered(
    notification: Notification,
) -> None:
    event = exception_opened("u-anna", reason_code="quality_hold")
    async with notification.service() as http:
        for _ in range(3):  # redeliveries of one message
            await notification.publish_event(event)
        await notification.wait_for(
            "SELECT count(*) = 2 FROM notification_delivery WHERE event_id = $1::uuid",
            event["event_id"])
        anna = {"Authorization": "Bearer " + JwtVerifier(
            notification.settings.jwt_secret.get_secret_value()).issue("u-anna", ["warehouse"])}
        inbox = (await http.get("/inbox", headers=anna)).json()
        assert inbox["unread"] == 1
        [entry] = inbox["entries"]
        assert (entry["rule_id"], entry["recipient"], entry["status"]) == (
            "exception-opened-to-owner", "user:u-anna", "sent")
        assert entry["title"] == "Exception quality_hold on dispatch d-9"
        # Someone else's entry is not theirs to read.
        other = await http.post(f"/inbox/{entry['id']}/read", headers=notification.token("sales"))
        assert other.status_code == 404
        read = await http.post(f"/inbox/{entry['id']}/read", headers=anna)
        assert read.status_code == 200 and read.json()["read_at"]
        assert (await http.get("/inbox", headers=anna)).json()["unread"] == 0
        # A blocking quality hold also tells the supervisors: every supervisor's inbox has it.
        boss = (await http.get("/inbox", headers=notification.token("supervisor"))).json()
        assert [e["rule_id"] for e in boss["entries"]] == ["blocking-quality-hold-to-supervisors"]
        listed = await http.get("/deliveries", params={"event_id": event["event_id"]},
                                headers=notification.token("ops"))
        assert sorted(d["recipient"] for d in listed.json()) == ["role:supervisor", "user:u-anna"]
        rules = await http.get("/rules", headers=notification.token("supervisor"))
        assert "exception-opened-to-owner" in [r["id"] for r in rules.json()]


def test_a_bad_rules_file_stops_the_service_naming_the_rule_and_field(
    tmp_path: Any, servers: Servers,
) -> None:
    bad = tmp_path / "rules.json"
    bad.write_text(json.dumps({"version": 1, "rules": [
        {"id": "tell-boss", "on": "dispatch.shipped", "notify": ["role:boss"],
         "channels": ["inbox"], "title": "x"}]}))
    from services.notification.rules import RulesError

    with pytest.raises(RulesError, match="rule 'tell-boss', field notify"):
        build(Settings(_env_file=None, pg_url=servers.pg_url, amqp_url=servers.amqp_url,
                       jwt_secret=secrets.token_hex(32), rules_file=bad))


# --------------------------------------------------------------------------- timeline


async def test_the_timeline_tells_whom_an_orders_events_told_on_which_channel_and_how_it_went(
    notification: Notification,
) -> None:
    ours = exception_opened("u-anna", reason_code="quality_hold")
    ours["data"]["order_id"] = order_id = f"o-{uuid.uuid4().hex[:8]}"
    theirs = exception_opened("u-anna")  # order o-9's, not in this story
    async with notification.service() as http:
        for event in (ours, theirs):
            await notification.publish_event(event)
        await notification.wait_for(
            "SELECT count(*) = 3 FROM notification_delivery WHERE event_id IN ($1::uuid, $2::uuid)",
            ours["event_id"], theirs["event_id"])
        answer = await http.get("/timeline", params={"order_id": order_id},
                                headers=notification.token("supervisor"))
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["order_id"], body["service"]) == (order_id, "notification")
        entries = sorted(body["entries"], key=lambda e: e["details"]["recipient"])
        assert [(e["action"], e["from_state"], e["to_state"], e["details"]["recipient"],
                 e["details"]["channel"], e["details"]["rule_id"]) for e in entries] == [
            ("notification.created", None, "sent", "role:supervisor", "inbox",
             "blocking-quality-hold-to-supervisors"),
            ("notification.created", None, "sent", "user:u-anna", "inbox",
             "exception-opened-to-owner"),
        ]
        for entry in entries:
            assert (entry["actor_id"], entry["actor_role"]) == ("notification", "system")
            assert entry["details"]["event_type"] == "dispatch.exception.opened"
            assert entry["details"]["event_id"] == ours["event_id"]
            assert (entry["details"]["status"], entry["details"]["attempts"]) == ("sent", 1)
            assert entry["correlation_id"] == str(ours["correlation_id"])
            # Recording the event published nothing: no trace id is on record for it.
            assert entry["trace_id"] is None
        # Deliveries name recipients: not for every reader.
        refused = await http.get("/timeline", params={"order_id": order_id},
                                 headers=notification.token("sales"))
        assert refused.status_code == 403
        nobody = await http.get("/timeline", params={"order_id": "o-nobody"},
                                headers=notification.token("ops"))
        assert nobody.status_code == 200 and nobody.json()["entries"] == []
