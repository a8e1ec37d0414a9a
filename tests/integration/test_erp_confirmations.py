"""Delivery confirmations to the ERP, with real peers: PostgreSQL, RabbitMQ, files, an HTTP ERP.

`dispatch.shipped` and `dispatch.corrected` become confirmations in the mode the connector has
at that moment (read from the database, so a switch needs no restart); the push worker sends
due ones through the file connector (atomic files, acknowledgement files read back) or the HTTP
connector (retried with the same Idempotency-Key until the ERP books it once).
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest
from pydantic import SecretStr

from services.erp_adapter.main import build
from shared.contracts.envelope import Actor, new_envelope
from shared.messaging.permissions import broker_user
from shared.messaging.topology import ERROR_HEADER, Topology
from spine_cli import settings as cli_settings
from spine_cli.main import main as spine
from tests.conftest import Servers
from tests.integration.test_erp_import import Erp, body, isolated_erp

pytestmark = pytest.mark.integration

SHIPPING = Actor(id="u-ship", role="shipping")


@pytest.fixture
async def erp(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, servers: Servers
) -> AsyncIterator[Erp]:
    async with isolated_erp(monkeypatch, tmp_path, servers) as found:
        yield found


def shipped(dispatch_id: str, *, version: int = 5, order_id: str = "o-1") -> dict[str, Any]:
    return new_envelope(type="dispatch.shipped", producer="dispatch", actor=SHIPPING, data={
        "dispatch_id": dispatch_id, "order_id": order_id, "version": version,
        "status": "shipped", "from_status": "packed",
        "evidence": {"carrier": "DHL", "tracking_number": "T-1"},
        "lines": [{"line_no": 1, "quantity": "4"}, {"line_no": 2, "quantity": "2"}],
        "backorder": [{"line_no": 1, "quantity": "1"}]})


def corrected(dispatch_id: str, *, version: int = 7) -> dict[str, Any]:
    return new_envelope(type="dispatch.corrected", producer="dispatch", actor=SHIPPING, data={
        "dispatch_id": dispatch_id, "order_id": "o-1", "version": version, "status": "shipped",
        "changes": [{"field": "shipped_quantity", "line_no": 1, "from": "4", "to": "5"},
                    {"field": "tracking_number", "from": "T-1", "to": "T-2"}],
        "reason": "miscounted", "requested_by": "u-ship", "approved_by": "u-boss",
        "approval_id": str(uuid.uuid4())})


async def publish(erp: Erp, envelope: dict[str, Any], raw: bytes | None = None) -> None:
    connection = await aio_pika.connect(erp.settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(f"{erp.settings.namespace}.events")
        await exchange.publish(aio_pika.Message(
            raw if raw is not None else json.dumps(envelope).encode(),
            content_type="application/json", message_id=envelope["event_id"],
            user_id=broker_user(erp.settings.amqp_url),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=envelope["type"])


async def wait_for(erp: Erp, query: str, *args: Any, timeout: float = 15.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while not (found := await erp.db.fetchval(query, *args)):
        assert asyncio.get_running_loop().time() < deadline, f"timed out: {query} {args}"
        await asyncio.sleep(0.05)
    return found


@asynccontextmanager
async def adapter(erp: Erp, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The erp_adapter (consumers, push worker, relay) with these settings, and a client."""
    config = erp.settings.model_copy(update={
        "erp_export_dir": erp.tmp_path / "export", "erp_ack_dir": erp.tmp_path / "ack",
        "erp_push_interval_s": 0.05, "erp_retry_base_s": 0.05, **settings})
    runtime, app = build(config)
    async with runtime.lifespan(app):
        await runtime.started()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://erp") as client:
            yield client


async def set_mode(client: httpx.AsyncClient, erp: Erp, name: str, mode: str) -> None:
    answer = await client.put(f"/connectors/{name}", headers=erp.token("integration"),
                              json={"mode": mode})
    assert answer.status_code == 200, answer.text
    assert answer.json()["mode"] == mode


async def test_in_shadow_mode_a_shipment_is_recorded_exactly_as_it_would_be_sent_and_nothing_is_sent(
    erp: Erp,
) -> None:
    dispatch_id = str(uuid.uuid4())
    event = shipped(dispatch_id)
    async with adapter(erp) as client:
        await publish(erp, event)
        await publish(erp, event)  # a redelivery: the inbox makes it one confirmation
        await wait_for(erp, "SELECT count(*) FROM confirmation WHERE status = 'shadowed'")
        await asyncio.sleep(0.5)
        listed = (await client.get("/confirmations", headers=erp.token("ops"))).json()

    assert len(listed) == 1
    found = listed[0]
    assert found["event_id"] == event["event_id"] and found["kind"] == "shipped"
    assert found["document"]["idempotency_key"] == event["event_id"]
    assert found["document"]["lines"] == [
        {"line_no": 1, "shipped_quantity": "4", "backorder_quantity": "1"},
        {"line_no": 2, "shipped_quantity": "2", "backorder_quantity": "0"}]
    assert (found["document"]["carrier"], found["document"]["tracking_number"]) == ("DHL", "T-1")
    # The replica now knows Spine's values (the conflicts compare against them).
    replica = await erp.db.fetchrow("SELECT * FROM dispatch_replica WHERE dispatch_id = $1",
                                    dispatch_id)
    assert (replica["status"], replica["version"], replica["tracking_number"]) == (
        "shipped", 5, "T-1")
    log = await erp.db.fetch("SELECT * FROM integration_log WHERE kind = 'confirmation'")
    assert [(r["outcome"], r["direction"], r["attempts"]) for r in log] == [("shadowed", "out", 0)]
    assert json.loads(log[0]["payload"]) == found["document"]
    assert not (erp.tmp_path / "export").exists()
    assert await erp.count("confirmation") == 1


async def test_approve_mode_waits_for_approval_then_writes_one_file_that_an_ack_file_acknowledges(
    erp: Erp,
) -> None:
    dispatch_id = str(uuid.uuid4())
    event = shipped(dispatch_id)
    async with adapter(erp) as client:
        await set_mode(client, erp, "file", "approve")  # at run time, no restart
        await publish(erp, event)
        confirmation_id = await wait_for(
            erp, "SELECT id FROM confirmation WHERE status = 'awaiting_approval'")
        await asyncio.sleep(0.3)
        assert not (erp.tmp_path / "export").exists()

        refused = await client.post(f"/confirmations/{confirmation_id}/approve",
                                    headers=erp.token("ops"))
        assert refused.status_code == 403
        approved = await client.post(f"/confirmations/{confirmation_id}/approve",
                                     headers=erp.token("integration"))
        assert approved.status_code == 200, approved.text
        await wait_for(erp, "SELECT count(*) FROM confirmation WHERE status = 'posted'")
        files = sorted((erp.tmp_path / "export").iterdir())
        assert [f.name.endswith(f"-{event['event_id']}.json") for f in files] == [True]
        assert json.loads(files[0].read_text())["idempotency_key"] == event["event_id"]
        posted = [body(m) for m in await erp.events(1)]
        assert posted[0]["type"] == "erp.confirmation.posted"
        assert posted[0]["data"]["status"] == "posted"

        # The ERP answers with an acknowledgement file naming the event id.
        (erp.tmp_path / "ack").mkdir()
        (erp.tmp_path / "ack" / "ack-1.json").write_text(json.dumps(
            {"idempotency_key": event["event_id"], "erp_document": "DN-4711"}))
        await wait_for(erp, "SELECT count(*) FROM confirmation WHERE status = 'acknowledged'")
        found = (await client.get(f"/confirmations/{confirmation_id}",
                                  headers=erp.token("integration"))).json()
    assert found["response"]["erp_document"] == "DN-4711"
    assert (erp.tmp_path / "ack" / "processed" / "ack-1.json").exists()
    audit = await erp.db.fetch("SELECT action FROM audit_log ORDER BY id")
    assert [r["action"] for r in audit] == [
        "erp.connector.mode_changed", "erp.confirmation.recorded", "erp.confirmation.approved",
        "erp.confirmation.posted", "erp.confirmation.acknowledged"]


async def test_a_correction_after_shipping_becomes_a_corrected_confirmation_and_stale_events_are_ignored(
    erp: Erp,
) -> None:
    dispatch_id = str(uuid.uuid4())
    async with adapter(erp, erp_export_format="csv") as client:
        await set_mode(client, erp, "file", "auto")
        await publish(erp, shipped(dispatch_id))
        await wait_for(erp, "SELECT count(*) FROM confirmation WHERE status = 'posted'")
        await publish(erp, corrected(dispatch_id))
        await publish(erp, shipped(dispatch_id, version=4))  # stale: nothing new
        await wait_for(erp, "SELECT count(*) FROM confirmation WHERE kind = 'corrected' "
                            "AND status = 'posted'")
        await asyncio.sleep(0.5)
    assert await erp.count("confirmation") == 2
    replica = await erp.db.fetchrow("SELECT * FROM dispatch_replica")
    assert (replica["version"], replica["tracking_number"]) == (7, "T-2")
    # Line 1 was 4 shipped + 1 owed; corrected to 5 shipped, nothing is owed any more.
    assert json.loads(replica["lines"])[0] == {
        "line_no": 1, "shipped_quantity": "5", "backorder_quantity": "0"}
    files = sorted((erp.tmp_path / "export").iterdir())
    assert len(files) == 2 and all(f.suffix == ".csv" for f in files)
    last = files[1].read_text().splitlines()
    assert last[0].startswith("idempotency_key,confirmation,")
    assert ",corrected," in last[1] and ",T-2," in last[1]


class FlakyErp(BaseHTTPRequestHandler):
    """An ERP endpoint: answers 503 to the first `failures` posts, then books each key once."""

    failures = 2
    posts: list[tuple[str | None, str | None]] = []
    booked: Counter[str] = Counter()

    def do_POST(self) -> None:  # noqa: N802 # the http.server API
        length = int(self.headers["Content-Length"])
        document = json.loads(self.rfile.read(length))
        key = self.headers["Idempotency-Key"]
        type(self).posts.append((key, self.headers.get("Authorization")))
        if len(type(self).posts) <= type(self).failures:
            self._answer(503, {"error": "try later"})
            return
        if document.get("order_id") == "refused":
            self._answer(422, {"error": "unknown order"})
            return
        if key not in type(self).booked:
            type(self).booked[key] += 1
        self._answer(201, {"erp_document": f"DN-{key[:8]}"})

    def _answer(self, status: int, answer: dict[str, Any]) -> None:
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def flaky_erp() -> Iterator[str]:
    FlakyErp.posts, FlakyErp.booked = [], Counter()
    server = ThreadingHTTPServer(("127.0.0.1", 0), FlakyErp)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/confirmations"
    finally:
        server.shutdown()
        server.server_close()


async def test_the_http_erp_failing_twice_gets_the_confirmation_retried_and_booked_once(
    erp: Erp,
) -> None:
    dispatch_id = str(uuid.uuid4())
    event = shipped(dispatch_id)
    with flaky_erp() as url:
        async with adapter(erp, erp_connector="http", erp_url=url,
                           erp_token=SecretStr("t0ken")) as client:
            await set_mode(client, erp, "http", "auto")
            await publish(erp, event)
            await wait_for(erp, "SELECT count(*) FROM confirmation WHERE status = 'acknowledged'")
            connectors = (await client.get("/connectors", headers=erp.token("ops"))).json()
    assert {c["name"]: (c["mode"], c["in_use"]) for c in connectors} == {
        "file": ("shadow", False), "http": ("auto", True)}
    assert FlakyErp.posts == [(event["event_id"], "Bearer t0ken")] * 3
    assert FlakyErp.booked == Counter({event["event_id"]: 1})
    log = await erp.db.fetch("SELECT outcome, attempts, last_error, request, response "
                             "FROM integration_log WHERE kind = 'confirmation' ORDER BY id")
    assert [(r["outcome"], r["attempts"]) for r in log] == [
        ("retrying", 1), ("retrying", 2), ("acknowledged", 3)]
    assert "503" in log[0]["last_error"]
    assert "t0ken" not in str([dict(r) for r in log])  # the secret is never logged
    assert json.loads(log[2]["response"])["status"] == 201


async def test_an_erp_refusal_fails_the_confirmation_at_once_and_integration_may_retry_it(
    erp: Erp,
) -> None:
    event = shipped(str(uuid.uuid4()), order_id="refused")
    with flaky_erp() as url:
        FlakyErp.failures = 0
        try:
            async with adapter(erp, erp_connector="http", erp_url=url) as client:
                await set_mode(client, erp, "http", "auto")
                await publish(erp, event)
                confirmation_id = await wait_for(
                    erp, "SELECT id FROM confirmation WHERE status = 'failed'")
                failed = [body(m) for m in await erp.events(1)]
                assert failed[0]["type"] == "erp.confirmation.failed"
                assert "422" in failed[0]["data"]["last_error"]
                await set_mode(client, erp, "http", "shadow")  # nothing goes out meanwhile
                retried = await client.post(f"/confirmations/{confirmation_id}/retry",
                                            headers=erp.token("integration"))
                assert retried.status_code == 200 and retried.json()["status"] == "pending"
                again = await client.post(f"/confirmations/{confirmation_id}/retry",
                                          headers=erp.token("integration"))
                assert again.status_code == 409
                assert again.headers["content-type"].startswith("application/problem+json")
                await asyncio.sleep(0.5)
                assert len(FlakyErp.posts) == 1  # shadow: the pending one waits
                await set_mode(client, erp, "http", "auto")
                await wait_for(erp, "SELECT count(*) FROM confirmation WHERE status = 'failed' "
                                    "AND attempts = 1 AND updated_at > created_at")
                await wait_for(erp, "SELECT count(*) FROM integration_log WHERE "
                                    "outcome = 'failed'", timeout=5)
        finally:
            FlakyErp.failures = 2
    assert len(FlakyErp.posts) == 2


async def test_a_malformed_shipment_goes_to_the_dead_letter_queue_with_its_reason(
    erp: Erp,
) -> None:
    event = shipped(str(uuid.uuid4()))
    del event["data"]["order_id"]
    async with adapter(erp):
        await publish(erp, event)
        topology = Topology(erp.settings.namespace)
        dlq = topology.dead_letter_queue(f"{erp.settings.namespace}.erp_adapter.dispatch-shipped")
        connection = await aio_pika.connect(erp.settings.amqp_url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.get_queue(dlq.name)
            deadline = asyncio.get_running_loop().time() + 10
            while (message := await queue.get(no_ack=False, fail=False)) is None:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.05)
            assert "order_id" in str(message.headers[ERROR_HEADER])
            await message.nack(requeue=True)
    assert await erp.count("confirmation") == 0


async def test_reconciliation_shows_an_unacknowledged_confirmation_and_a_correction_the_erp_has_not_booked(
    erp: Erp, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    booked, waiting = str(uuid.uuid4()), str(uuid.uuid4())
    with flaky_erp() as url:
        FlakyErp.failures = 0
        try:
            async with adapter(erp, erp_connector="http", erp_url=url) as client:
                await set_mode(client, erp, "http", "auto")
                await publish(erp, shipped(booked))
                await wait_for(erp, "SELECT count(*) FROM confirmation "
                                    "WHERE status = 'acknowledged'")
                await set_mode(client, erp, "http", "approve")
                await publish(erp, shipped(waiting, order_id="o-2"))
                await publish(erp, corrected(booked))
                await wait_for(erp, "SELECT count(*) = 2 FROM confirmation "
                                    "WHERE status = 'awaiting_approval'")
                report = (await client.get("/reconciliation", headers=erp.token("ops"))).json()
        finally:
            FlakyErp.failures = 2
    assert (report["shipped"], report["acknowledged"], report["in_agreement"]) == (2, 1, 0)
    findings = {f["dispatch_id"]: f for f in report["findings"]}
    assert findings[waiting]["finding"] == "missing_in_erp"
    assert findings[waiting]["confirmation_status"] == "awaiting_approval"
    assert findings[booked]["finding"] == "differs"
    assert [(d["field"], d["spine"], d["erp"]) for d in findings[booked]["differences"]] == [
        ("lines[1].backorder_quantity", "0", "1"), ("lines[1].shipped_quantity", "5", "4"),
        ("tracking_number", "T-2", "T-1")]

    monkeypatch.setattr(cli_settings, "ENV_FILE", erp.tmp_path / "no.env")
    code = await asyncio.to_thread(spine, ["erp", "reconcile"])
    out = capsys.readouterr().out
    assert code == 1
    assert f"missing_in_erp: dispatch {waiting} (order o-2)" in out
    assert "    tracking_number: Spine 'T-2', ERP 'T-1'" in out
    assert out.splitlines()[-1] == "2 shipped, 1 acknowledged by the ERP, 0 in agreement, " \
                                   "2 finding(s)"


async def test_switching_modes_while_shipments_stream_in_loses_and_doubles_nothing(erp: Erp) -> None:
    # 90 shipments published in a stream (each twice: a redelivery must not double it) while
    # the file connector goes shadow → auto → approve → auto; every shipment is one
    # confirmation in the mode it met, and every one that was due to be sent is one file.
    events = [shipped(str(uuid.uuid4()), order_id=f"o-{n}") for n in range(90)]

    async def stream() -> None:
        for event in events:
            await publish(erp, event)
            await publish(erp, event)

    async with adapter(erp) as client:
        publishing = asyncio.create_task(stream())
        for mode in ("auto", "approve", "auto"):
            await asyncio.sleep(0.25)
            await set_mode(client, erp, "file", mode)
        await publishing
        await wait_for(erp, "SELECT count(*) = 90 FROM confirmation", timeout=60)
        # What waits for approval is approved now; then everything due has been sent.
        waiting = [r["id"] for r in await erp.db.fetch(
            "SELECT id FROM confirmation WHERE status = 'awaiting_approval'")]
        for confirmation_id in waiting:
            approved = await client.post(f"/confirmations/{confirmation_id}/approve",
                                         headers=erp.token("integration"))
            assert approved.status_code == 200, approved.text
        await wait_for(erp, "SELECT count(*) = 0 FROM confirmation WHERE status IN "
                            "('pending', 'awaiting_approval')", timeout=60)
        await asyncio.sleep(0.5)  # a second file for any of them would be written by now

    statuses = Counter(r["status"] for r in await erp.db.fetch("SELECT status FROM confirmation"))
    assert set(statuses) <= {"shadowed", "posted"}, statuses
    assert sum(statuses.values()) == 90
    by_event = Counter(r["event_id"] for r in await erp.db.fetch(
        "SELECT event_id::text FROM confirmation"))
    assert set(by_event) == {e["event_id"] for e in events} and set(by_event.values()) == {1}
    posted = {r["event_id"] for r in await erp.db.fetch(
        "SELECT event_id::text FROM confirmation WHERE status = 'posted'")}
    # A file is named `<time>-<seq>-<event id>.json`: one file per posted confirmation.
    written = Counter(f.name.removesuffix(".json")[-36:] for f in (erp.tmp_path / "export").iterdir()
                      if f.suffix == ".json")
    assert set(written) == posted and set(written.values()) == {1}, written
    # The switches really happened while the shipments streamed in: each mode got some.
    assert statuses["shadowed"] and statuses["posted"] and waiting, (statuses, len(waiting))
