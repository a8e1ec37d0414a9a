"""Exceptions, four-eyes approvals and corrections through the dispatch service's HTTP API,
and the reports outside plant systems send over AMQP (production exceptions, progress).

The service is built by its own `build(settings)` on a fresh database (logged in as its runtime
role) with its lifespan running; requests go through its ASGI app, and what it committed is
read back from its tables (the outbox is what it will publish). Every business table carries a
trigger, installed by the test as administrator, that notes the transaction of each write: the
module ends by checking that no transaction changed a table without writing an audit row.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import aio_pika
import asyncpg
import httpx
import pytest

from services.dispatch.config import Settings
from services.dispatch.domain import OrderSnapshot
from services.dispatch.handlers import CancelForOrder, CreateDispatch, EscalateOverdue, handle
from services.dispatch.main import build
from services.dispatch.unit_of_work import sql_unit_of_work
from shared.contracts.envelope import new_envelope
from shared.db.engine import make_engine
from shared.domain import Actor
from shared.messaging.permissions import broker_user
from shared.messaging.topology import delete_broker_objects
from shared.runtime import Runtime
from shared.tokens import JwtVerifier
from tests.conftest import Servers, service_database, unique_name

pytestmark = pytest.mark.integration

SECRET = secrets.token_hex(32)
TOKENS = JwtVerifier(SECRET)
SHIP_TO = {"name": "Nordwerk GmbH", "street": "Hafenstr. 1", "city": "Bremen",
           "postal_code": "28195", "country": "DE"}
LINES = [{"line_no": 1, "product_id": "P-1", "quantity": "5", "uom": "EA"},
         {"line_no": 2, "product_id": "P-2", "quantity": "2.5", "uom": "KG"}]
FULL = {"lines": [{"line_no": 1, "quantity": "5"}, {"line_no": 2, "quantity": "2.5"}]}
SHORT = {"lines": [{"line_no": 1, "quantity": "4"}, {"line_no": 2, "quantity": "2.5"}]}
SHIPMENT = {"carrier": "DHL", "tracking_number": "JD0146"}
BUSINESS_TABLES = ("dispatch", "dispatch_exception", "dispatch_approval", "dispatch_parked")

# Every write to a business table notes its transaction; so does every audit row. A
# transaction in the first list and not the second changed state without a trace.
_WRITE_WATCH = """
CREATE TABLE IF NOT EXISTS test_write_watch (txid bigint NOT NULL, tbl text NOT NULL);
GRANT INSERT ON test_write_watch TO PUBLIC;
CREATE OR REPLACE FUNCTION test_note_write() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER AS $$
BEGIN
    INSERT INTO test_write_watch VALUES (txid_current(), TG_TABLE_NAME);
    RETURN NULL;
END $$;
"""


def token(role: str, sub: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS.issue(sub or f'u-{role}', [role])}"}


@dataclass
class Service:
    runtime: Runtime
    http: httpx.AsyncClient
    db: asyncpg.Connection
    settings: Settings

    async def new_dispatch(self, order_id: str | None = None, *, external_ref: str | None = None,
                           source: str | None = None) -> str:
        dispatch_id: str = await handle(CreateDispatch(
            event_id=str(uuid.uuid4()), consumer="test.backbone", correlation_id=uuid.uuid4(),
            order=OrderSnapshot(order_id=order_id or f"o-{uuid.uuid4().hex[:8]}",
                                external_ref=external_ref, source=source, customer_id="C-1",
                                requested_ship_date=date(2027, 1, 15), priority="normal",
                                ship_to=SHIP_TO, lines=LINES)), self.runtime_uow())
        return dispatch_id

    def runtime_uow(self) -> Any:
        return self.http._transport.app.state.uow  # type: ignore[attr-defined]

    async def get(self, dispatch_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/dispatches/{dispatch_id}", headers=token("ops"))
        assert response.status_code == 200, response.text
        found: dict[str, Any] = response.json()
        return found

    async def move(self, dispatch_id: str, to: str, role: str, *, sub: str | None = None,
                   evidence: dict[str, Any] | None = None, reason: str = "") -> httpx.Response:
        version = (await self.get(dispatch_id))["version"]
        return await self.http.post(
            f"/dispatches/{dispatch_id}/transitions",
            json={"to": to, "reason": reason, "evidence": evidence or {}},
            headers={**token(role, sub), "If-Match": f'"{version}"'})

    async def walk(self, dispatch_id: str, *steps: tuple[str, str, dict[str, Any] | None]) -> None:
        for to, role, evidence in steps:
            response = await self.move(dispatch_id, to, role, evidence=evidence)
            assert response.status_code == 200, response.text

    async def outbox(self, dispatch_id: str) -> list[tuple[str, dict[str, Any]]]:
        rows = await self.db.fetch(
            "SELECT routing_key, body FROM outbox WHERE body::jsonb->'data'->>'dispatch_id' = $1 "
            "ORDER BY id", dispatch_id)
        return [(r["routing_key"], json.loads(r["body"])["data"]) for r in rows]

    async def publish(self, routing_key: str, data: dict[str, Any]) -> str:
        """Publish as an outside system does; returns the message's id."""
        system = routing_key.split(".")[1]
        envelope = new_envelope(type=routing_key, producer=system, data=data,
                                actor=Actor(system, "system"), correlation_id=uuid.uuid4())
        envelope["actor"] = None  # a machine sender may leave it out: it is then the system
        async with await aio_pika.connect(self.settings.amqp_url) as connection:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(f"{self.settings.namespace}.events")
            await exchange.publish(aio_pika.Message(
                json.dumps(envelope, default=str).encode(), message_id=str(envelope["event_id"]),
                content_type="application/json", user_id=broker_user(self.settings.amqp_url),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=routing_key,
                mandatory=True)
        return str(envelope["event_id"])

    async def answered(self, routing_key: str, **data: Any) -> dict[str, Any]:
        """The first outbox event of this type whose data has these values (waits for it)."""
        for _ in range(300):
            for row in await self.db.fetch(
                    "SELECT body FROM outbox WHERE routing_key = $1 ORDER BY id", routing_key):
                found: dict[str, Any] = json.loads(row["body"])["data"]
                if all(found.get(k) == v for k, v in data.items()):
                    return found
            await asyncio.sleep(0.05)
        pytest.fail(f"no {routing_key} with {data}")

    async def dead_letters(self, purpose: str) -> list[dict[str, Any]]:
        """What is in the dead-letter queue of one of the service's queues (left there)."""
        queue = f"{self.settings.namespace}.dispatch.{purpose}.dlq"
        found = []
        async with await aio_pika.connect(self.settings.amqp_url) as connection:
            channel = await connection.channel()
            dlq = await channel.get_queue(queue)
            while (message := await dlq.get(no_ack=False, fail=False)) is not None:
                found.append({"body": json.loads(message.body), "headers": message.headers})
        return found

    async def counts(self) -> dict[str, int]:
        return {t: await self.db.fetchval(f'SELECT count(*) FROM "{t}"')  # nosec B608 # fixed names
                for t in (*BUSINESS_TABLES, "audit_log", "outbox")}


@pytest.fixture(scope="module")
async def service(servers: Servers) -> AsyncIterator[Service]:
    prefix = unique_name("backbone")
    runtime = None
    try:
        async with service_database(servers.pg_url, "dispatch", prefix) as password:
            settings = Settings(_env_file=None, pg_url=servers.pg_url, amqp_url=servers.amqp_url,
                                db_prefix=prefix, namespace=prefix, jwt_secret=SECRET,
                                db_password=password, escalation_interval_s=3600,
                                system_roles="wms=warehouse")
            db = await asyncpg.connect(f"{servers.pg_url}/{settings.database_name}")
            await db.execute(_WRITE_WATCH)
            for table in BUSINESS_TABLES:
                await db.execute(f"CREATE TRIGGER test_watch AFTER INSERT OR UPDATE OR DELETE "
                                 f"ON {table} FOR EACH ROW EXECUTE FUNCTION test_note_write()")
            await db.execute("CREATE TRIGGER test_watch AFTER INSERT ON audit_log FOR EACH ROW "
                             "EXECUTE FUNCTION test_note_write()")
            runtime, app = build(settings)
            try:
                async with app.router.lifespan_context(app), httpx.AsyncClient(
                    transport=httpx.ASGITransport(app), base_url="http://dispatch"
                ) as http:
                    yield Service(runtime, http, db, settings)
                    # Last: every transaction of the whole module that wrote state wrote audit.
                    untraced = await db.fetch(
                        "SELECT txid, array_agg(DISTINCT tbl) AS tables FROM test_write_watch "
                        "GROUP BY txid HAVING NOT bool_or(tbl = 'audit_log')")
                    assert not untraced, f"changes without an audit row: {untraced}"
                    assert await db.fetchval("SELECT count(DISTINCT txid) FROM test_write_watch") > 20
            finally:
                await db.close()
    finally:
        if runtime is not None:
            queues = [q for sub in runtime.broker.subscribers
                      for q in (sub.queue.name, runtime.topology.dead_letter_queue(sub.queue.name).name)]
            await delete_broker_objects(servers.amqp_url, queues,
                                        [f"{prefix}.events", f"{prefix}.dlx"])


def _due(hours: float = 4) -> str:
    return (datetime.now(UTC) + timedelta(hours=hours)).isoformat()


async def _open(service: Service, dispatch_id: str, role: str = "planner", *, owner: str,
                blocking: bool = True, due: str | None = None) -> httpx.Response:
    return await service.http.post(
        f"/dispatches/{dispatch_id}/exceptions",
        json={"reason_code": "stock_shortage", "description": "bin empty", "owner": owner,
              "due_at": due or _due(), "blocking": blocking},
        headers=token(role))


# ------------------------------------------------------------------------------ exceptions


async def test_a_blocking_exception_holds_the_dispatch_and_its_resolution_returns_it(
    service: Service,
) -> None:
    dispatch_id = await service.new_dispatch()
    await service.walk(dispatch_id, ("released", "planner", None), ("picking", "warehouse", None))
    opened = await _open(service, dispatch_id, owner="role:warehouse")
    assert opened.status_code == 201, opened.text
    exception = opened.json()
    assert opened.headers["Location"] == f"/exceptions/{exception['id']}"
    assert (exception["status"], exception["dispatch_status"]) == ("open", "on_hold")
    held = await service.get(dispatch_id)
    assert (held["status"], held["held_from"]) == ("on_hold", "picking")
    assert [x["id"] for x in held["exceptions"]] == [exception["id"]]

    # Not the owner, not a supervisor: refused, nothing written.
    before = await service.counts()
    for role in ("planner", "shipping"):
        refused = await service.http.post(f"/exceptions/{exception['id']}/acknowledge",
                                          headers=token(role))
        assert refused.status_code == 403, refused.text
        assert "only its owner or a supervisor" in refused.json()["detail"]
    assert await service.counts() == before

    acked = await service.http.post(f"/exceptions/{exception['id']}/acknowledge",
                                    headers=token("warehouse", "u-anna"))
    assert acked.status_code == 200 and acked.json()["status"] == "acknowledged", acked.text
    no_text = await service.http.post(f"/exceptions/{exception['id']}/resolve",
                                      json={"resolution": ""}, headers=token("warehouse"))
    assert no_text.status_code == 422
    resolved = await service.http.post(f"/exceptions/{exception['id']}/resolve",
                                       json={"resolution": "restocked from bin 7"},
                                       headers=token("warehouse", "u-anna"))
    assert resolved.status_code == 200, resolved.text
    assert (resolved.json()["status"], resolved.json()["dispatch_status"]) == ("resolved", "picking")
    again = await service.http.post(f"/exceptions/{exception['id']}/resolve",
                                    json={"resolution": "twice"}, headers=token("supervisor"))
    assert again.status_code == 409, again.text

    types = [t for t, _ in await service.outbox(dispatch_id)]
    assert types[-5:] == ["dispatch.exception.opened", "dispatch.on_hold",
                          "dispatch.exception.acknowledged", "dispatch.exception.resolved",
                          "dispatch.picking"]


async def test_the_hold_door_and_the_exceptions_door_have_one_and_the_same_effect(
    service: Service,
) -> None:
    by_exception, by_transition = await service.new_dispatch(), await service.new_dispatch()
    due = _due()
    assert (await _open(service, by_exception, owner="u-7", due=due)).status_code == 201
    moved = await service.move(by_transition, "on_hold", "planner", reason="bin empty",
                               evidence={"reason_code": "stock_shortage", "owner": "u-7",
                                         "due_at": due})
    assert moved.status_code == 200, moved.text

    def shape(d: dict[str, Any]) -> Any:
        return (d["status"], d["held_from"], d["version"],
                [(x["reason_code"], x["owner"], x["blocking"], x["status"], x["due_at"],
                  x["description"]) for x in d["exceptions"]])

    assert shape(await service.get(by_exception)) == shape(await service.get(by_transition))
    assert [t for t, _ in await service.outbox(by_exception)] == \
        [t for t, _ in await service.outbox(by_transition)]


async def test_a_second_blocking_exception_keeps_the_hold_until_both_are_resolved(
    service: Service,
) -> None:
    dispatch_id = await service.new_dispatch()
    first = (await _open(service, dispatch_id, owner="u-7")).json()
    second = (await _open(service, dispatch_id, owner="role:planner")).json()
    assert (await service.get(dispatch_id))["status"] == "on_hold"
    await service.http.post(f"/exceptions/{first['id']}/resolve", json={"resolution": "ok"},
                            headers=token("planner", "u-7"))
    assert (await service.get(dispatch_id))["status"] == "on_hold"
    await service.http.post(f"/exceptions/{second['id']}/resolve", json={"resolution": "ok"},
                            headers=token("planner"))
    assert (await service.get(dispatch_id))["status"] == "pending"


async def test_an_overdue_exception_is_escalated_once_by_two_replicas_ticking_together(
    service: Service,
) -> None:
    dispatch_id = await service.new_dispatch()
    opened = await _open(service, dispatch_id, owner="u-7", due=_due(-1))
    exception_id = opened.json()["id"]
    listed = await service.http.get("/exceptions", params={"overdue": "true",
                                                           "dispatch_id": dispatch_id},
                                    headers=token("ops"))
    assert [x["id"] for x in listed.json()] == [exception_id]
    # A second "replica": its own engine and unit of work on the same database.
    other = make_engine(service.settings.database_url, pool_size=2, service="dispatch")
    try:
        ticks = await asyncio.gather(*(handle(EscalateOverdue(), uow) for uow in (
            service.runtime_uow(), sql_unit_of_work(other), service.runtime_uow())))
    finally:
        await other.dispose()
    escalated = [data for t, data in await service.outbox(dispatch_id)
                 if t == "dispatch.exception.escalated"]
    assert len(escalated) == 1, ticks
    assert (escalated[0]["owner"], escalated[0]["escalated_from"]) == ("role:supervisor", "u-7")
    assert await handle(EscalateOverdue(), service.runtime_uow()) == 0
    # The one who owned it keeps working on it.
    resolved = await service.http.post(f"/exceptions/{exception_id}/resolve",
                                       json={"resolution": "found it"},
                                       headers=token("planner", "u-7"))
    assert resolved.status_code == 200, resolved.text


# ------------------------------------------------------------------------------ approvals


async def test_cancelling_after_picking_began_waits_for_a_second_supervisor(
    service: Service,
) -> None:
    dispatch_id = await service.new_dispatch()
    await service.walk(dispatch_id, ("released", "planner", None), ("picking", "warehouse", None))
    asked = await service.move(dispatch_id, "cancelled", "supervisor", sub="u-sara",
                               reason="customer withdrew")
    assert asked.status_code == 202, asked.text
    approval = asked.json()
    assert asked.headers["Location"] == f"/approvals/{approval['id']}"
    assert (approval["kind"], approval["status"], approval["requested_by"]) == (
        "cancel", "pending", "u-sara")
    assert (await service.get(dispatch_id))["status"] == "picking"

    before = await service.counts()
    own = await service.http.post(f"/approvals/{approval['id']}/approve", json={"comment": "ok"},
                                  headers=token("supervisor", "u-sara"))
    assert own.status_code == 403 and "a different supervisor" in own.json()["detail"], own.text
    clerk = await service.http.post(f"/approvals/{approval['id']}/approve", json={},
                                    headers=token("warehouse"))
    assert clerk.status_code == 403
    assert await service.counts() == before

    approved = await service.http.post(f"/approvals/{approval['id']}/approve",
                                       json={"comment": "agreed with the customer"},
                                       headers=token("supervisor", "u-otto"))
    assert approved.status_code == 200, approved.text
    assert (approved.json()["status"], approved.json()["decided_by"]) == ("approved", "u-otto")
    assert (await service.get(dispatch_id))["status"] == "cancelled"
    [(_, cancelled)] = [(t, d) for t, d in await service.outbox(dispatch_id)
                        if t == "dispatch.cancelled"]
    assert cancelled["approval"] == {"id": approval["id"], "kind": "cancel",
                                     "requested_by": "u-sara", "approved_by": "u-otto",
                                     "comment": "agreed with the customer"}
    history = (await service.http.get(f"/dispatches/{dispatch_id}/history",
                                      headers=token("sales"))).json()
    assert [h["action"] for h in history][-3:] == [
        "dispatch.approval.requested", "dispatch.approval.approved", "dispatch.cancelled"]
    assert [(h["actor_id"], h["actor_role"]) for h in history][-3:] == [
        ("u-sara", "supervisor"), ("u-otto", "supervisor"), ("u-otto", "supervisor")]
    assert all(h["correlation_id"] == history[0]["correlation_id"] for h in history)


async def test_a_short_pack_is_approved_then_shipped_carrying_its_backorder(service: Service) -> None:
    dispatch_id = await service.new_dispatch()
    await service.walk(dispatch_id, ("released", "planner", None), ("picking", "warehouse", None))
    asked = await service.move(dispatch_id, "packed", "warehouse", evidence=SHORT)
    assert asked.status_code == 202 and asked.json()["kind"] == "short_pack", asked.text
    rejected = await service.http.post(f"/approvals/{asked.json()['id']}/reject", json={},
                                       headers=token("supervisor"))
    assert rejected.status_code == 422, "a rejection says why"
    approved = await service.http.post(f"/approvals/{asked.json()['id']}/approve", json={},
                                       headers=token("supervisor"))
    assert approved.status_code == 200, approved.text
    await service.walk(dispatch_id, ("shipped", "shipping", SHIPMENT))
    events = dict(await service.outbox(dispatch_id))
    for kind in ("dispatch.packed", "dispatch.shipped"):
        assert events[kind]["backorder"] == [{"line_no": 1, "quantity": "1"}], kind
        assert events[kind]["lines"] == SHORT["lines"], kind


async def test_an_approval_after_the_dispatch_moved_on_is_refused_and_writes_nothing(
    service: Service,
) -> None:
    dispatch_id = await service.new_dispatch()
    await service.walk(dispatch_id, ("released", "planner", None), ("picking", "warehouse", None))
    asked = (await service.move(dispatch_id, "cancelled", "supervisor", sub="u-sara",
                                reason="customer withdrew")).json()
    await service.walk(dispatch_id, ("packed", "warehouse", FULL))
    before = await service.counts()
    late = await service.http.post(f"/approvals/{asked['id']}/approve", json={},
                                   headers=token("supervisor", "u-otto"))
    assert late.status_code == 409 and "moved on" in late.json()["detail"], late.text
    assert await service.counts() == before
    rejected = await service.http.post(f"/approvals/{asked['id']}/reject",
                                       json={"reason": "overtaken by packing"},
                                       headers=token("supervisor", "u-otto"))
    assert rejected.status_code == 200 and rejected.json()["status"] == "rejected"


async def test_a_correction_after_shipping_is_approved_and_keeps_the_original_in_history(
    service: Service,
) -> None:
    dispatch_id = await service.new_dispatch()
    await service.walk(dispatch_id, ("released", "planner", None), ("picking", "warehouse", None),
                       ("packed", "warehouse", FULL), ("shipped", "shipping", SHIPMENT))
    bad = await service.http.post(f"/dispatches/{dispatch_id}/corrections", json={
        "changes": [{"field": "shipped_quantity", "line_no": 9, "to": "1"}], "reason": "typo"},
        headers=token("shipping"))
    assert bad.status_code == 422 and "not a shipped line" in bad.text
    asked = await service.http.post(f"/dispatches/{dispatch_id}/corrections", json={
        "changes": [{"field": "tracking_number", "to": "JD0147"},
                    {"field": "shipped_quantity", "line_no": 1, "to": "4"}],
        "reason": "scanner read the wrong label; one unit stayed behind"},
        headers=token("shipping", "u-sam"))
    assert asked.status_code == 202, asked.text
    assert (await service.get(dispatch_id))["facts"]["tracking_number"] == "JD0146"
    approved = await service.http.post(f"/approvals/{asked.json()['id']}/approve",
                                       json={"comment": "checked the scan"},
                                       headers=token("supervisor", "u-otto"))
    assert approved.status_code == 200, approved.text
    shown = await service.get(dispatch_id)
    assert shown["facts"]["tracking_number"] == "JD0147"
    assert shown["facts"]["backorder"] == [{"line_no": 1, "quantity": "1"}]
    [correction] = shown["corrections"]
    assert (correction["requested_by"], correction["approved_by"]) == ("u-sam", "u-otto")
    assert correction["changes"][0] == {"field": "tracking_number", "line_no": None,
                                        "from": "JD0146", "to": "JD0147"}
    [(_, corrected)] = [(t, d) for t, d in await service.outbox(dispatch_id)
                        if t == "dispatch.corrected"]
    assert corrected["changes"][1] == {"field": "shipped_quantity", "line_no": 1, "from": "5",
                                       "to": "4"}
    history = (await service.http.get(f"/dispatches/{dispatch_id}/history",
                                      headers=token("sales"))).json()
    actions = [h["action"] for h in history]
    assert actions.index("dispatch.shipped") < actions.index("dispatch.corrected")
    shipped = next(h for h in history if h["action"] == "dispatch.shipped")
    assert shipped["details"]["evidence"]["tracking_number"] == "JD0146", "the original stays"


# ------------------------------------------------------------------------------ concurrency


async def test_people_acting_on_one_dispatch_at_once_have_exactly_one_winner(
    service: Service,
) -> None:
    dispatch_id = await service.new_dispatch()
    version = (await service.get(dispatch_id))["version"]
    answers = await asyncio.gather(*(service.http.post(
        f"/dispatches/{dispatch_id}/transitions", json={"to": "released"},
        headers={**token("planner", f"u-{i}"), "If-Match": f'"{version}"'}) for i in range(8)))
    assert sorted(a.status_code for a in answers) == [200] + [412] * 7
    assert [t for t, _ in await service.outbox(dispatch_id)].count("dispatch.released") == 1

    await service.walk(dispatch_id, ("picking", "warehouse", None))
    asked = (await service.move(dispatch_id, "cancelled", "supervisor", sub="u-sara",
                                reason="customer withdrew")).json()
    decisions = await asyncio.gather(
        *(service.http.post(f"/approvals/{asked['id']}/approve", json={},
                            headers=token("supervisor", f"u-boss-{i}")) for i in range(3)),
        service.http.post(f"/approvals/{asked['id']}/reject", json={"reason": "no"},
                          headers=token("supervisor", "u-boss-9")))
    assert sorted(d.status_code for d in decisions) == [200, 409, 409, 409], \
        [d.text for d in decisions]
    decided = [t for t, _ in await service.outbox(dispatch_id)
               if t in ("dispatch.approval.approved", "dispatch.approval.rejected")]
    assert len(decided) == 1


async def test_two_people_resolving_one_exception_at_once_have_exactly_one_winner(
    service: Service,
) -> None:
    dispatch_id = await service.new_dispatch()
    exception_id = (await _open(service, dispatch_id, owner="role:planner")).json()["id"]
    answers = await asyncio.gather(*(service.http.post(
        f"/exceptions/{exception_id}/resolve", json={"resolution": f"done by {i}"},
        headers=token("planner", f"u-{i}")) for i in range(5)))
    assert sorted(a.status_code for a in answers) == [200] + [409] * 4
    types = [t for t, _ in await service.outbox(dispatch_id)]
    assert (types.count("dispatch.exception.resolved"), types.count("dispatch.pending")) == (1, 1)


# ------------------------------------------------------------------------------ plant systems


async def test_a_production_exception_from_the_shop_floor_holds_the_orders_dispatch(
    service: Service,
) -> None:
    ref = f"MES-{uuid.uuid4().hex[:6]}"
    dispatch_id = await service.new_dispatch(external_ref=ref, source="mes")
    await service.publish("ext.mes.production.exception", {
        "order_external_ref": ref, "reason_code": "quality_hold", "blocking": True,
        "description": "batch 7 failed inspection"})
    opened = await service.answered("dispatch.exception.opened", dispatch_id=dispatch_id)
    assert (opened["owner"], opened["reason_code"], opened["blocking"]) == (
        "role:planner", "quality_hold", True)
    assert (await service.get(dispatch_id))["status"] == "on_hold"
    history = (await service.http.get(f"/dispatches/{dispatch_id}/history",
                                      headers=token("ops"))).json()
    assert (history[-2]["actor_id"], history[-2]["actor_role"]) == ("mes", "system")


async def test_a_production_exception_before_its_dispatch_is_answered_kept_and_applied_later(
    service: Service,
) -> None:
    order_id = f"o-{uuid.uuid4().hex[:8]}"
    await service.publish("ext.mes.production.exception", {
        "order_id": order_id, "reason_code": "production_delay", "blocking": True})
    rejected = await service.answered("dispatch.exception.rejected", order_id=order_id)
    assert rejected["parked"] is True and "kept" in rejected["reasons"][0]
    dispatch_id = await service.new_dispatch(order_id)
    shown = await service.get(dispatch_id)
    assert shown["status"] == "on_hold"
    assert [x["reason_code"] for x in shown["exceptions"]] == ["production_delay"]
    assert [t for t, _ in await service.outbox(dispatch_id)] == [
        "dispatch.created", "dispatch.exception.opened", "dispatch.on_hold"]


async def test_a_production_exception_the_dispatch_refuses_is_answered_and_dead_lettered(
    service: Service,
) -> None:
    dispatch_id = await service.new_dispatch()
    order_id = (await service.get(dispatch_id))["order_id"]
    message_id = await service.publish("ext.mes.production.exception", {
        "order_id": order_id, "reason_code": "gremlins"})
    rejected = await service.answered("dispatch.exception.rejected", order_id=order_id)
    assert "reason_code 'gremlins' is not one of" in rejected["reasons"][0]
    assert rejected["parked"] is False
    broken = await service.publish("ext.mes.production.exception", {"reason_code": "other"})
    await service.answered("dispatch.exception.rejected", source="mes",
                           reasons=["data: Value error, either order_external_ref or order_id "
                                    "is required"])
    for _ in range(100):
        kept = {m["body"]["event_id"]: m for m in await service.dead_letters("production-exception")}
        if {message_id, broken} <= set(kept):
            break
        await asyncio.sleep(0.05)
    assert "gremlins" in kept[message_id]["headers"]["x-spine-error"]
    assert "contract violation" in kept[broken]["headers"]["x-spine-error"]
    assert (await service.get(dispatch_id))["exceptions"] == []


async def test_progress_from_a_plant_system_is_applied_with_its_role_or_answered(
    service: Service,
) -> None:
    ref = f"W-{uuid.uuid4().hex[:6]}"
    dispatch_id = await service.new_dispatch(external_ref=ref, source="wms")
    await service.walk(dispatch_id, ("released", "planner", None))
    await service.publish("ext.wms.dispatch.progress", {"dispatch_id": dispatch_id,
                                                         "to": "picking"})
    moved = await service.answered("dispatch.picking", dispatch_id=dispatch_id)
    assert moved["reason"] == "reported by wms"
    # Beyond its role (warehouse may not ship), and a system with no role at all: refused.
    before = await service.get(dispatch_id)
    await service.publish("ext.wms.dispatch.progress", {
        "order_external_ref": ref, "to": "shipped",
        "evidence": {"carrier": "DHL", "tracking_number": "1"}})
    refused = await service.answered("dispatch.progress.rejected", source="wms", to="shipped")
    assert refused["reasons"] == ["no role of ['warehouse'] may move a dispatch to shipped"]
    await service.publish("ext.tms.dispatch.progress", {"dispatch_id": dispatch_id,
                                                         "to": "packed", "evidence": FULL})
    nobody = await service.answered("dispatch.progress.rejected", source="tms")
    assert "SPINE_SYSTEM_ROLES names none for it" in nobody["reasons"][0]
    after = await service.get(dispatch_id)
    assert (after["status"], after["version"]) == (before["status"], before["version"])


async def test_an_order_cancelled_before_its_dispatch_opened_cancels_it_as_it_opens(
    service: Service,
) -> None:
    order_id = f"o-{uuid.uuid4().hex[:8]}"
    uow = service.runtime_uow()
    parked = await handle(CancelForOrder(event_id=str(uuid.uuid4()), consumer="test.backbone",
                                         correlation_id=uuid.uuid4(), order_id=order_id,
                                         reason="customer withdrew"), uow)
    assert parked is None
    dispatch_id = await service.new_dispatch(order_id)
    assert (await service.get(dispatch_id))["status"] == "cancelled"
    assert [t for t, _ in await service.outbox(dispatch_id)] == [
        "dispatch.created", "dispatch.cancelled"]


# ------------------------------------------------------------------------------ timeline


async def test_the_timeline_tells_an_orders_dispatch_and_its_exceptions_oldest_first(
    service: Service,
) -> None:
    order_id = f"o-{uuid.uuid4().hex[:8]}"
    dispatch_id = await service.new_dispatch(order_id)
    opened = await _open(service, dispatch_id, owner="u-7")
    assert opened.status_code == 201, opened.text
    other = await service.new_dispatch()  # another order's dispatch is not in this story

    answer = await service.http.get("/timeline", params={"order_id": order_id},
                                    headers=token("sales"))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["order_id"], body["service"]) == (order_id, "dispatch")
    entries = body["entries"]
    # A blocking exception holds the dispatch in the same unit of work: opened, then held.
    assert [(e["action"], e["from_state"], e["to_state"]) for e in entries] == [
        ("dispatch.created", None, "pending"),
        ("dispatch.exception.opened", None, "open"),
        ("dispatch.on_hold", "pending", "on_hold"),
    ]
    assert {e["entity_id"] for e in entries} == {dispatch_id} != {other}
    created, exception, held = entries
    assert (created["actor_role"], exception["actor_id"], exception["actor_role"]) == (
        "system", "u-planner", "planner")
    assert exception["details"]["exception_id"] == opened.json()["id"]
    assert exception["reason"] == "bin empty"
    # The request ran in a span, and its outbox rows kept the trace; the test called the
    # creating handler outside any span, so no trace id is on record for it, and none is made.
    assert len(exception["trace_id"]) == 32 and held["trace_id"] == exception["trace_id"]
    assert created["trace_id"] is None


async def test_a_cancellation_parked_before_the_dispatch_opened_is_part_of_the_orders_timeline(
    service: Service,
) -> None:
    order_id = f"o-{uuid.uuid4().hex[:8]}"
    await handle(CancelForOrder(event_id=str(uuid.uuid4()), consumer="test.backbone",
                                correlation_id=uuid.uuid4(), order_id=order_id,
                                reason="customer withdrew"), service.runtime_uow())
    await service.new_dispatch(order_id)
    entries = (await service.http.get("/timeline", params={"order_id": order_id},
                                      headers=token("ops"))).json()["entries"]
    assert [(e["action"], e["entity_type"]) for e in entries] == [
        ("dispatch.cancellation_parked", "order"), ("dispatch.created", "dispatch"),
        ("dispatch.cancelled", "dispatch")]
    # Parking published nothing: no trace id is on record for it, and none is made up.
    assert entries[0]["trace_id"] is None
    assert entries[0]["reason"] == "customer withdrew"
    unknown = await service.http.get("/timeline", params={"order_id": "o-nobody"},
                                     headers=token("ops"))
    assert unknown.status_code == 200 and unknown.json()["entries"] == []
