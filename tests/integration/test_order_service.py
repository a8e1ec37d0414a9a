"""The order service as built by `build()`, against a real PostgreSQL and RabbitMQ.

Everything lives in a namespace and a database of its own (SPINE_NAMESPACE, SPINE_DB_PREFIX),
both removed at the end. Messages go in as real AMQP publishes on `<ns>.events`; what the
service says back is read from a queue bound to `order.#`, exactly as another service would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import asyncpg
import httpx
import pytest
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage

from services.order.config import Settings
from services.order.main import build
from shared.auth import JwtVerifier
from shared.contracts.envelope import Actor, new_envelope
from shared.messaging.permissions import broker_user
from shared.messaging.topology import CONSUMER_QUEUES, ERROR_HEADER, Topology
from shared.runtime import Runtime
from tests.conftest import Servers, service_database

pytestmark = pytest.mark.integration


SHIP_TO = {"name": "Nordwerk GmbH", "street": "Hafenstr. 1", "city": "Bremen",
           "postal_code": "28195", "country": "DE"}
WAIT_S = 15.0


# ------------------------------------------------------------------------------ harness


@dataclass
class EventLog:
    """Every `order.*` event the service published, as (routing key, AMQP message, body)."""

    events: list[dict[str, Any]] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        async with message.process():
            self.events.append({
                "routing_key": message.routing_key,
                "message_id": message.message_id,
                "correlation_id": message.correlation_id,
                "delivery_mode": message.delivery_mode,
                "headers": dict(message.headers or {}),
                "body": json.loads(message.body),
            })
        self._changed.set()

    def matching(self, routing_key: str, **data: Any) -> list[dict[str, Any]]:
        return [
            e for e in self.events
            if e["routing_key"] == routing_key
            and all(e["body"]["data"].get(k) == v for k, v in data.items())
        ]

    async def wait_for(self, routing_key: str, **data: Any) -> dict[str, Any]:
        """The first event with this routing key whose data has these values (or fail)."""
        deadline = time.monotonic() + WAIT_S
        while True:
            self._changed.clear()
            found = self.matching(routing_key, **data)
            if found:
                return found[0]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = [(e["routing_key"], e["body"]["data"]) for e in self.events[-5:]]
                pytest.fail(f"no {routing_key} with {data} within {WAIT_S}s; last seen: {seen}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)


@dataclass
class OrderService:
    """The running service and the handles a test uses to talk to it and look inside."""

    settings: Settings
    runtime: Runtime
    http: httpx.AsyncClient
    db: asyncpg.Connection
    channel: AbstractChannel
    events_exchange: AbstractExchange
    log: EventLog
    jwt: JwtVerifier

    async def publish(
        self,
        routing_key: str,
        data: Any,
        *,
        producer: str,
        event_id: uuid.UUID | None = None,
        correlation_id: uuid.UUID | None = None,
    ) -> dict[str, Any]:
        """Publish one envelope the way a well-behaved producer does; returns the envelope."""
        envelope = new_envelope(
            type=routing_key, producer=producer, data=data,
            actor=Actor(id="u-1042", role="sales"),
            event_id=event_id, correlation_id=correlation_id,
        )
        await self.publish_raw(routing_key, json.dumps(envelope).encode(),
                               message_id=envelope["event_id"])
        return envelope

    async def publish_raw(self, routing_key: str, body: bytes, *, message_id: str) -> None:
        await self.events_exchange.publish(
            aio_pika.Message(body, message_id=message_id, content_type="application/json",
                             user_id=broker_user(self.settings.amqp_url),
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=routing_key,
            mandatory=True,
        )

    def token(self, *roles: str, sub: str = "u-7") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.jwt.issue(sub, list(roles))}"}

    async def wait_until(self, query: str, *args: Any) -> Any:
        """Poll the service's database until `query` returns a truthy value (or fail)."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            value = await self.db.fetchval(query, *args)
            if value:
                return value
            await asyncio.sleep(0.05)
        pytest.fail(f"timed out waiting for: {query} {args}")

    async def counts(self) -> dict[str, int]:
        """Rows in every table a write could touch."""
        tables = ("customer_order", "order_line", "outbox", "audit_log", "idempotency_key",
                  "inbox")
        return {t: await self.db.fetchval(f"SELECT count(*) FROM {t}") for t in tables}


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Any:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


async def _wait_for_replica(db: asyncpg.Connection, table: str, id_: str, version: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if await db.fetchval(f"SELECT version FROM {table} WHERE id = $1", id_) == version:
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"{table} {id_} v{version} never replicated")


@pytest.fixture(scope="module")
async def svc(servers: Servers) -> AsyncIterator[OrderService]:
    """The order service, started once for this module, with replicas fed through the broker."""
    ns = f"ordertest_{uuid.uuid4().hex[:8]}"
    secret = secrets.token_hex(32)
    env = {"SPINE_DB_PREFIX": ns, "SPINE_NAMESPACE": ns, "SPINE_JWT_SECRET": secret,
           "SPINE_PG_URL": servers.pg_url, "SPINE_AMQP_URL": servers.amqp_url}
    async with service_database(servers.pg_url, "order", ns) as password:
        with _environment({**env, "SPINE_DB_PASSWORD": password}):
            settings = Settings()
            assert settings.database_name == f"{ns}_order"
            runtime = None
            amqp = await aio_pika.connect(servers.amqp_url, timeout=10)
            topology = Topology(ns)
            observer_name = f"{ns}.test.order-events"
            try:
                runtime, app = build(settings)
                db = await asyncpg.connect(f"{servers.pg_url}/{settings.database_name}")
                async with app.router.lifespan_context(app):
                    channel = await amqp.channel(publisher_confirms=True)
                    events = await channel.get_exchange(topology.events.name, ensure=True)
                    # Bound before anything is published: the relay publishes `mandatory`.
                    observer = await channel.declare_queue(observer_name, exclusive=True)
                    await observer.bind(events, "order.#")
                    log = EventLog()
                    await observer.consume(log.on_message)
                    async with httpx.AsyncClient(
                        transport=httpx.ASGITransport(app), base_url="http://order"
                    ) as http:
                        service = OrderService(settings, runtime, http, db, channel, events, log,
                                               JwtVerifier(secret))
                        await _seed_replicas(service)
                        yield service
                await db.close()
            finally:
                await _delete_topology(amqp, topology, runtime, observer_name)
                await amqp.close()


async def _seed_replicas(svc: OrderService) -> None:
    """The ERP's customers and products, delivered the way erp_adapter delivers them."""
    for customer_id, active in (("C-1", True), ("C-9", False)):
        await svc.publish("erp.customer.upserted",
                          {"customer_id": customer_id, "name": f"Customer {customer_id}",
                           "active": active, "version": 1}, producer="erp_adapter")
    for product_id, uom in (("P-1", "EA"), ("P-2", "KG")):
        await svc.publish("erp.product.upserted",
                          {"product_id": product_id, "name": f"Product {product_id}",
                           "uom": uom, "active": True, "version": 1}, producer="erp_adapter")
    for table, id_ in (("customer", "C-1"), ("customer", "C-9"), ("product", "P-1"),
                       ("product", "P-2")):
        await _wait_for_replica(svc.db, table, id_, 1)


async def _delete_topology(
    amqp: aio_pika.abc.AbstractConnection, topology: Topology, runtime: Any, observer: str
) -> None:
    queues = [observer]
    if runtime is not None:
        for sub in runtime.broker.subscribers:
            queues += [sub.queue.name, topology.dead_letter_queue(sub.queue.name).name]
    for kind, name in [*(("queue", q) for q in queues),
                       ("exchange", topology.events.name), ("exchange", topology.dead_letters.name)]:
        # A fresh channel each time: a failed delete closes the channel it ran on.
        channel = await amqp.channel()
        with contextlib.suppress(Exception):
            if kind == "queue":
                await channel.queue_delete(name)
            else:
                await channel.exchange_delete(name)
        with contextlib.suppress(Exception):
            await channel.close()


def _submission(ref: str, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "external_ref": ref, "customer_id": "C-1", "requested_ship_date": "2026-12-01",
        "priority": "rush", "ship_to": dict(SHIP_TO),
        "lines": [{"line_no": 1, "product_id": "P-1", "quantity": "4", "uom": "EA"},
                  {"line_no": 2, "product_id": "P-2", "quantity": "12.500", "uom": "KG"}],
        "confirmed": False,
    }
    data.update(changes)
    return data


def _ref() -> str:
    return f"WS-{uuid.uuid4().hex[:10]}"


async def _orders_with_ref(svc: OrderService, ref: str) -> int:
    return int(await svc.db.fetchval(
        "SELECT count(*) FROM customer_order WHERE external_ref = $1", ref))


# ------------------------------------------------------------------------------ messages in


async def test_a_valid_submission_becomes_a_received_order_and_an_order_received_event(
    svc: OrderService,
) -> None:
    ref = _ref()
    sent = await svc.publish("ext.webshop.order.submitted", _submission(ref), producer="webshop")

    received = await svc.log.wait_for("order.received", external_ref=ref)

    body = received["body"]
    assert body["producer"] == "order"
    assert body["data"]["source"] == "webshop"
    assert body["data"]["version"] == 1 and body["data"]["status"] == "received"
    # One journey: the submitter's correlation id, and the submission as the cause.
    assert body["correlation_id"] == sent["correlation_id"]
    assert body["causation_id"] == sent["event_id"]
    assert received["message_id"] == body["event_id"]
    assert received["correlation_id"] == sent["correlation_id"]
    assert received["delivery_mode"] == aio_pika.DeliveryMode.PERSISTENT
    row = await svc.db.fetchrow(
        "SELECT status, version, source, priority, correlation_id::text AS correlation_id "
        "FROM customer_order WHERE id = $1", uuid.UUID(body["data"]["order_id"]))
    assert dict(row) == {"status": "received", "version": 1, "source": "webshop",
                         "priority": "rush", "correlation_id": sent["correlation_id"]}
    lines = await svc.db.fetch(
        "SELECT line_no, product_id, quantity::text AS q, uom FROM order_line "
        "WHERE order_id = $1 ORDER BY line_no", uuid.UUID(body["data"]["order_id"]))
    assert [tuple(r) for r in lines] == [(1, "P-1", "4.000", "EA"), (2, "P-2", "12.500", "KG")]


async def test_a_submission_confirmed_upstream_is_received_and_confirmed_in_one_step(
    svc: OrderService,
) -> None:
    ref = _ref()
    sent = await svc.publish("ext.webshop.order.submitted", _submission(ref, confirmed=True),
                             producer="webshop")

    received = await svc.log.wait_for("order.received", external_ref=ref)
    confirmed = await svc.log.wait_for("order.confirmed", external_ref=ref)

    order_id = received["body"]["data"]["order_id"]
    snapshot = confirmed["body"]["data"]
    assert snapshot["order_id"] == order_id and snapshot["version"] == 2
    assert snapshot["customer_id"] == "C-1" and snapshot["priority"] == "rush"
    assert snapshot["requested_ship_date"] == "2026-12-01"
    assert snapshot["ship_to"] == SHIP_TO
    assert [(x["line_no"], x["product_id"], x["quantity"], x["uom"]) for x in snapshot["lines"]] \
        == [(1, "P-1", "4.000", "EA"), (2, "P-2", "12.500", "KG")]
    assert confirmed["body"]["correlation_id"] == sent["correlation_id"]
    row = await svc.db.fetchrow("SELECT status, version FROM customer_order WHERE id = $1",
                                uuid.UUID(order_id))
    assert tuple(row) == ("confirmed", 2)
    audit = await svc.db.fetch(
        "SELECT action, from_state, to_state, correlation_id::text AS c FROM audit_log "
        "WHERE entity_type = 'order' AND entity_id = $1 ORDER BY id", order_id)
    assert [(a["action"], a["from_state"], a["to_state"]) for a in audit] == [
        ("order.received", None, "received"), ("order.confirmed", "received", "confirmed")]
    assert {a["c"] for a in audit} == {sent["correlation_id"]}


async def test_the_same_message_delivered_three_times_makes_one_order(svc: OrderService) -> None:
    ref = _ref()
    event_id = uuid.uuid4()
    for _ in range(3):
        await svc.publish("ext.webshop.order.submitted", _submission(ref), producer="webshop",
                          event_id=event_id)
    await svc.log.wait_for("order.received", external_ref=ref)
    # Deliveries are handled in order of arrival, so once a later message is through, the
    # three copies before it are too.
    later = _ref()
    await svc.publish("ext.webshop.order.submitted", _submission(later), producer="webshop")
    await svc.log.wait_for("order.received", external_ref=later)

    assert await _orders_with_ref(svc, ref) == 1
    assert len(svc.log.matching("order.received", external_ref=ref)) == 1
    assert await svc.db.fetchval(
        "SELECT count(*) FROM inbox WHERE message_id = $1", str(event_id)) == 1
    # The inbox stopped the copies before any business rule ran: no duplicate-submission audit.
    assert await svc.db.fetchval(
        "SELECT count(*) FROM audit_log WHERE details->>'external_ref' = $1", ref) == 1
    queue = await svc.channel.declare_queue(
        f"{svc.settings.namespace}.order.order-submitted", passive=True)
    assert queue.declaration_result.message_count == 0


async def test_a_second_message_with_the_same_external_ref_is_ignored_and_audited(
    svc: OrderService,
) -> None:
    ref = _ref()
    await svc.publish("ext.webshop.order.submitted", _submission(ref), producer="webshop")
    first = await svc.log.wait_for("order.received", external_ref=ref)
    resent = await svc.publish("ext.webshop.order.submitted", _submission(ref, priority="normal"),
                               producer="webshop")

    reason = await svc.wait_until(
        "SELECT reason FROM audit_log WHERE action = 'order.submission_duplicate' "
        "AND details->>'event_id' = $1", resent["event_id"])

    assert reason.startswith("duplicate submission ignored")
    assert first["body"]["data"]["order_id"] in reason
    assert await _orders_with_ref(svc, ref) == 1
    assert len(svc.log.matching("order.received", external_ref=ref)) == 1
    assert await svc.db.fetchval(
        "SELECT priority FROM customer_order WHERE external_ref = $1", ref) == "rush"


async def test_data_breaking_the_contract_is_rejected_with_readable_reasons(
    svc: OrderService,
) -> None:
    ref = _ref()
    bad = _submission(ref, ship_to={**SHIP_TO, "country": "de"})
    bad["lines"][0]["quantity"] = "0"
    await svc.publish("ext.webshop.order.submitted", bad, producer="webshop")

    rejected = await svc.log.wait_for("order.rejected", external_ref=ref)

    assert rejected["body"]["data"]["source"] == "webshop"
    assert rejected["body"]["data"]["reasons"] == [
        "ship_to.country: must be a two-letter ISO 3166 code",
        "line 1: quantity must be greater than 0",
    ]
    assert await _orders_with_ref(svc, ref) == 0
    assert await svc.db.fetchval(
        "SELECT count(*) FROM audit_log WHERE action = 'order.rejected' "
        "AND details->>'external_ref' = $1", ref) == 1


async def test_an_order_the_replicas_refuse_is_rejected_and_creates_nothing(
    svc: OrderService,
) -> None:
    ref = _ref()
    lines = [{"line_no": 1, "product_id": "P-1", "quantity": "1", "uom": "KG"},
             {"line_no": 2, "product_id": "P-999", "quantity": "1", "uom": "EA"}]
    before = await svc.counts()
    await svc.publish("ext.webshop.order.submitted",
                      _submission(ref, customer_id="C-9", lines=lines), producer="webshop")

    rejected = await svc.log.wait_for("order.rejected", external_ref=ref)

    assert rejected["body"]["data"]["reasons"] == [
        "customer C-9 is inactive",
        "line 1: unit KG does not match product P-1, which is sold in EA",
        "line 2: product P-999 is unknown",
    ]
    after = await svc.counts()
    # Exactly the inbox row, the audit row and the order.rejected event; no order, no lines.
    assert {k: after[k] - before[k] for k in after} == {
        "customer_order": 0, "order_line": 0, "outbox": 1, "audit_log": 1,
        "idempotency_key": 0, "inbox": 1}


async def test_a_producer_submitting_under_another_systems_name_is_dead_lettered_unanswered(
    svc: OrderService,
) -> None:
    # The consumers' provenance check refuses it before the order service sees it: an answer
    # would go to webshop about a message webshop never sent.
    ref = _ref()
    sent = await svc.publish("ext.webshop.order.submitted", _submission(ref), producer="crm")
    [message] = (await _dead_letters(svc, [sent["event_id"]])).values()

    reason = str((message.headers or {}).get(ERROR_HEADER))
    assert "producer 'crm' may not publish ext.webshop.order.submitted" in reason
    assert await _orders_with_ref(svc, ref) == 0
    assert not [e for e in svc.log.events if e["body"]["data"].get("external_ref") == ref]


async def test_garbage_and_broken_envelopes_land_in_the_dead_letter_queue_with_a_reason(
    svc: OrderService,
) -> None:
    garbage_id, broken_id = str(uuid.uuid4()), str(uuid.uuid4())
    await svc.publish_raw("ext.webshop.order.submitted", b"\x00\xffnot json at all",
                          message_id=garbage_id)
    await svc.publish_raw("ext.webshop.order.submitted",
                          json.dumps({"type": "ext.webshop.order.submitted"}).encode(),
                          message_id=broken_id)
    dead = await _dead_letters(svc, [garbage_id, broken_id])
    reasons = {key: str((m.headers or {}).get(ERROR_HEADER)) for key, m in dead.items()}

    assert set(reasons) == {garbage_id, broken_id}
    assert "body is not JSON" in reasons[garbage_id]
    assert reasons[broken_id].startswith("contract violation:")
    assert "event_id" in reasons[broken_id]


async def _dead_letters(
    svc: OrderService, message_ids: list[str]
) -> dict[str, aio_pika.abc.AbstractIncomingMessage]:
    """The submissions queue's dead letters with these ids (others, from other tests, skipped)."""
    dlq = await svc.channel.declare_queue(
        f"{svc.settings.namespace}.order.order-submitted.dlq", passive=True)
    found: dict[str, aio_pika.abc.AbstractIncomingMessage] = {}
    deadline = time.monotonic() + WAIT_S
    while len(found) < len(message_ids) and time.monotonic() < deadline:
        message = await dlq.get(no_ack=True, fail=False)
        if message is None:
            await asyncio.sleep(0.1)
        elif message.message_id in message_ids:
            found[str(message.message_id)] = message
    assert set(found) == set(message_ids), f"dead-lettered: {sorted(found)}"
    return found


async def test_replicas_keep_only_the_newest_version_of_a_product(svc: OrderService) -> None:
    product_id = f"P-{uuid.uuid4().hex[:6]}"

    async def send(version: int, uom: str, active: bool = True) -> str:
        env = await svc.publish("erp.product.upserted",
                                {"product_id": product_id, "name": "Bolt", "uom": uom,
                                 "active": active, "version": version}, producer="erp_adapter")
        return str(env["event_id"])

    await send(2, "EA")
    await _wait_for_replica(svc.db, "product", product_id, 2)
    stale = await send(1, "KG")
    await svc.wait_until("SELECT 1 FROM inbox WHERE message_id = $1", stale)
    assert tuple(await svc.db.fetchrow(
        "SELECT uom, version FROM product WHERE id = $1", product_id)) == ("EA", 2)

    await send(3, "EA", active=False)
    await _wait_for_replica(svc.db, "product", product_id, 3)
    assert await svc.db.fetchval("SELECT active FROM product WHERE id = $1", product_id) is False
    assert [r["action"] for r in await svc.db.fetch(
        "SELECT action FROM audit_log WHERE entity_type = 'product' AND entity_id = $1 "
        "ORDER BY id", product_id)] == ["product.inserted", "product.updated"]


# ------------------------------------------------------------------------------ HTTP


def _order_body(**changes: Any) -> dict[str, Any]:
    body = _submission("unused", **changes)
    del body["external_ref"], body["confirmed"]
    return body


async def test_posting_twice_with_one_idempotency_key_creates_one_order_and_replays(
    svc: OrderService,
) -> None:
    headers = {**svc.token("sales"), "Idempotency-Key": uuid.uuid4().hex}
    body = _order_body()
    before = await svc.counts()

    first = await svc.http.post("/orders", json=body, headers=headers)
    second = await svc.http.post("/orders", json=body, headers=headers)

    assert first.status_code == 201, first.text
    assert second.status_code == 201
    assert second.json() == first.json()
    assert first.headers["Idempotent-Replayed"] == "false"
    assert second.headers["Idempotent-Replayed"] == "true"
    order_id = first.json()["id"]
    assert first.headers["Location"] == f"/orders/{order_id}"
    after = await svc.counts()
    assert (after["customer_order"] - before["customer_order"],
            after["idempotency_key"] - before["idempotency_key"]) == (1, 1)
    await svc.log.wait_for("order.received", order_id=order_id)
    assert len(svc.log.matching("order.received", order_id=order_id)) == 1


async def test_an_idempotency_key_reused_for_another_order_is_refused(svc: OrderService) -> None:
    headers = {**svc.token("sales"), "Idempotency-Key": uuid.uuid4().hex}
    assert (await svc.http.post("/orders", json=_order_body(), headers=headers)).status_code == 201
    before = await svc.counts()

    other = await svc.http.post("/orders", json=_order_body(priority="normal"), headers=headers)

    assert other.status_code == 422
    assert "already used for a different request" in other.json()["detail"]
    assert await svc.counts() == before


async def test_another_caller_may_use_the_same_idempotency_key(svc: OrderService) -> None:
    key = uuid.uuid4().hex
    one = await svc.http.post("/orders", json=_order_body(),
                              headers={**svc.token("sales", sub="u-a"), "Idempotency-Key": key})
    two = await svc.http.post("/orders", json=_order_body(),
                              headers={**svc.token("sales", sub="u-b"), "Idempotency-Key": key})
    assert (one.status_code, two.status_code) == (201, 201)
    assert one.json()["id"] != two.json()["id"]


async def test_an_order_the_replicas_refuse_gets_422_with_reasons_and_writes_nothing(
    svc: OrderService,
) -> None:
    body = _order_body(customer_id="C-404")
    body["lines"][1]["product_id"] = "P-999"
    before = await svc.counts()

    response = await svc.http.post(
        "/orders", json=body, headers={**svc.token("sales"), "Idempotency-Key": uuid.uuid4().hex})

    assert response.status_code == 422
    assert response.json()["reasons"] == [
        "customer C-404 is unknown", "line 2: product P-999 is unknown"]
    assert await svc.counts() == before


async def test_without_a_token_or_with_the_wrong_role_nothing_is_written(
    svc: OrderService,
) -> None:
    before = await svc.counts()

    anonymous = await svc.http.post("/orders", json=_order_body())
    warehouse = await svc.http.post("/orders", json=_order_body(),
                                    headers={**svc.token("warehouse"),
                                             "Idempotency-Key": uuid.uuid4().hex})

    assert anonymous.status_code == 401
    assert warehouse.status_code == 403
    assert "sales" in warehouse.json()["detail"]
    assert await svc.counts() == before


async def test_an_order_typed_in_is_confirmed_then_cancelled_with_versions_checked(
    svc: OrderService,
) -> None:
    sales, supervisor = svc.token("sales"), svc.token("supervisor", sub="u-boss")
    ref = f"PO-{uuid.uuid4().hex[:8]}"
    created = await svc.http.post("/orders", json={**_order_body(), "external_ref": ref},
                                  headers=sales)
    assert created.status_code == 201, created.text
    order_id = created.json()["id"]
    taken = await svc.http.post("/orders", json={**_order_body(), "external_ref": ref},
                                headers=sales)
    assert taken.status_code == 409 and taken.json()["order_id"] == order_id

    confirmed = await svc.http.post(f"/orders/{order_id}/confirm",
                                    headers={**sales, "If-Match": '"1"'})
    assert confirmed.status_code == 200, confirmed.text
    assert (confirmed.json()["status"], confirmed.json()["version"]) == ("confirmed", 2)
    event = await svc.log.wait_for("order.confirmed", order_id=order_id)
    assert event["body"]["data"]["version"] == 2
    assert event["body"]["actor"] == {"id": "u-7", "role": "sales"}
    assert event["body"]["correlation_id"] == created.json()["correlation_id"]

    again = await svc.http.post(f"/orders/{order_id}/confirm", headers=sales)
    assert again.status_code == 409
    no_reason = await svc.http.post(f"/orders/{order_id}/cancel", json={"reason": ""},
                                    headers=supervisor)
    assert no_reason.status_code == 422
    stale = await svc.http.post(f"/orders/{order_id}/cancel", json={"reason": "late"},
                                headers={**supervisor, "If-Match": '"1"'})
    assert stale.status_code == 412
    cancelled = await svc.http.post(f"/orders/{order_id}/cancel",
                                    json={"reason": "customer withdrew"}, headers=supervisor)
    assert cancelled.status_code == 200 and cancelled.json()["version"] == 3
    twice = await svc.http.post(f"/orders/{order_id}/cancel", json={"reason": "again"},
                                headers=supervisor)
    assert twice.status_code == 409
    cancel_event = await svc.log.wait_for("order.cancelled", order_id=order_id)
    assert cancel_event["body"]["data"]["reason"] == "customer withdrew"

    got = await svc.http.get(f"/orders/{order_id}", headers=svc.token("warehouse"))
    assert got.status_code == 200 and got.headers["ETag"] == '"3"'
    assert got.json()["status"] == "cancelled"
    assert [x["quantity"] for x in got.json()["lines"]] == ["4.000", "12.500"]
    history = (await svc.http.get(f"/orders/{order_id}/history", headers=sales)).json()
    assert [(h["action"], h["actor_id"], h["actor_role"]) for h in history] == [
        ("order.received", "u-7", "sales"),
        ("order.confirmed", "u-7", "sales"),
        ("order.cancelled", "u-boss", "supervisor"),
    ]
    listed = await svc.http.get("/orders", params={"status": "cancelled", "external_ref": ref},
                                headers=sales)
    assert [o["id"] for o in listed.json()] == [order_id]


async def test_unknown_orders_and_bad_requests_get_clear_answers(svc: OrderService) -> None:
    sales = svc.token("sales")
    missing = await svc.http.get(f"/orders/{uuid.uuid4()}", headers=sales)
    assert missing.status_code == 404 and "no order" in missing.json()["detail"]
    confirm_missing = await svc.http.post(f"/orders/{uuid.uuid4()}/confirm", headers=sales)
    assert confirm_missing.status_code == 404
    refused = await svc.http.post("/orders", json={**_order_body(), "confirmed": True},
                                  headers=sales)
    assert refused.status_code == 422
    assert any(p.startswith("confirmed") for p in refused.json()["problems"])


async def test_unknown_fields_inside_an_order_are_refused_at_every_depth_and_nothing_is_written(
    svc: OrderService,
) -> None:
    sales = svc.token("sales")
    body = _order_body()
    body["lines"][0]["price"] = "9.99"
    body["ship_to"]["vip"] = True
    before = await svc.counts()

    refused = await svc.http.post("/orders", json=body, headers=sales)
    cancel = await svc.http.post(f"/orders/{uuid.uuid4()}/cancel", headers=sales,
                                 json={"reason": "typo", "force": True})

    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert sorted(refused.json()["problems"]) == [
        "lines.0.price: Extra inputs are not permitted",
        "ship_to.vip: Extra inputs are not permitted",
    ]
    assert cancel.status_code == 422
    assert cancel.json()["problems"] == ["force: Extra inputs are not permitted"]
    assert await svc.counts() == before


@pytest.mark.parametrize(("query", "problem"), [
    ({"offset": "100000000000000000000"}, "query.offset: Input should be less than or equal to"),
    ({"offset": str(2**31)}, "query.offset: Input should be less than or equal to 2147483647"),
    ({"limit": "501"}, "query.limit: Input should be less than or equal to 500"),
    ({"customer_id": "a\x00b"}, "query.customer_id: must not contain control characters"),
    ({"external_ref": "x" * 201}, "query.external_ref: String should have at most 200"),
    ({"source": "line\nbreak"}, "query.source: must not contain control characters"),
])
async def test_a_list_parameter_the_database_cannot_hold_is_refused_naming_it(
    svc: OrderService, query: dict[str, str], problem: str,
) -> None:
    response = await svc.http.get("/orders", params=query, headers=svc.token("sales"))

    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert [p for p in response.json()["problems"] if p.startswith(problem)], response.json()


async def test_a_body_over_the_size_limit_is_refused_with_413_and_nothing_is_written(
    svc: OrderService,
) -> None:
    body = _order_body()
    body["ship_to"]["name"] = "x" * (svc.settings.max_body_bytes + 1)
    before = await svc.counts()

    response = await svc.http.post("/orders", json=body, headers=svc.token("sales"))

    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == (
        f"the request body is larger than {svc.settings.max_body_bytes} bytes")
    assert await svc.counts() == before


async def test_the_service_consumes_exactly_the_queues_the_shared_topology_lists(
    svc: OrderService,
) -> None:
    topology = svc.runtime.topology
    expected = {(topology.queue_name("order", purpose), key)
                for purpose, key in CONSUMER_QUEUES["order"]}
    subscribed = {(sub.queue.name, sub.queue.routing_key)  # type: ignore[attr-defined]
                  for sub in svc.runtime.broker.subscribers}
    assert subscribed == expected


async def test_the_asyncapi_catalogue_lists_what_the_service_consumes_and_publishes(
    svc: OrderService,
) -> None:
    spec = (await svc.http.get("/asyncapi.json")).text
    for name in ("order.received", "order.rejected", "order.confirmed", "order.cancelled",
                 "ext.*.order.submitted", "erp.customer.upserted", "erp.product.upserted"):
        assert name in spec


async def test_metrics_count_and_time_each_request_by_route_template(svc: OrderService) -> None:
    await svc.http.get(f"/orders/{uuid.uuid4()}", headers=svc.token("sales"))

    metrics = (await svc.http.get("/metrics")).text
    assert 'spine_http_requests_total{method="GET",route="/orders/{order_id}",service="order",' \
           'status="404"}' in metrics
    assert 'spine_http_request_seconds_count{route="/orders/{order_id}",service="order"}' in metrics


# ------------------------------------------------------------------------------ timeline


async def test_the_timeline_tells_an_orders_audit_rows_oldest_first_with_actors_and_trace_ids(
    svc: OrderService,
) -> None:
    sales = svc.token("sales", sub="u-sam")
    created = await svc.http.post("/orders", json={**_order_body(), "external_ref": _ref()},
                                  headers=sales)
    assert created.status_code == 201, created.text
    order_id = created.json()["id"]
    confirmed = await svc.http.post(f"/orders/{order_id}/confirm",
                                    headers={**sales, "If-Match": '"1"'})
    assert confirmed.status_code == 200, confirmed.text
    cancelled = await svc.http.post(f"/orders/{order_id}/cancel", json={"reason": "customer withdrew"},
                                    headers={**svc.token("supervisor", sub="u-boss"), "If-Match": '"2"'})
    assert cancelled.status_code == 200, cancelled.text

    # Any reader may ask; warehouse people read orders too.
    answer = await svc.http.get("/timeline", params={"order_id": order_id},
                                headers=svc.token("warehouse"))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["order_id"], body["service"]) == (order_id, "order")
    entries = body["entries"]
    assert [(e["action"], e["from_state"], e["to_state"], e["actor_id"], e["actor_role"])
            for e in entries] == [
        ("order.received", None, "received", "u-sam", "sales"),
        ("order.confirmed", "received", "confirmed", "u-sam", "sales"),
        ("order.cancelled", "confirmed", "cancelled", "u-boss", "supervisor"),
    ]
    assert entries[2]["reason"] == "customer withdrew"
    assert all(e["service"] == "order" and e["entity_type"] == "order"
               and e["entity_id"] == order_id for e in entries)
    assert [e["occurred_at"] for e in entries] == sorted(e["occurred_at"] for e in entries)
    # Each unit of work published its event; the event's outbox row carried the trace it ran
    # in. One correlation id runs through the whole journey, so it alone would not tell them.
    assert len({e["correlation_id"] for e in entries}) == 1
    for entry in entries:
        traceparent = await svc.db.fetchval(
            "SELECT headers->>'traceparent' FROM outbox WHERE routing_key = $1 "
            "AND body::jsonb->'data'->>'order_id' = $2", entry["action"], order_id)
        assert entry["trace_id"] == traceparent.split("-")[1]
    assert len({e["trace_id"] for e in entries}) == 3  # three requests, three traces

    paged = await svc.http.get("/timeline", params={"order_id": order_id, "limit": 1, "offset": 1},
                               headers=svc.token("ops"))
    assert [e["action"] for e in paged.json()["entries"]] == ["order.confirmed"]
    # An order this service never recorded: nothing to tell, not an error.
    unknown = await svc.http.get("/timeline", params={"order_id": str(uuid.uuid4())},
                                 headers=svc.token("ops"))
    assert unknown.status_code == 200 and unknown.json()["entries"] == []
