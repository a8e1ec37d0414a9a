"""Inbound ERP records against the ownership registry, on a real PostgreSQL and RabbitMQ.

A value for a field Spine owns is never applied: it becomes one conflict row (however often the
ERP sends it), published once as `erp.conflict.detected`, audited, logged, and resolved by a
person. Fields the ERP owns are applied as the import applies them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.erp_adapter.config import DEFAULT_OWNERSHIP
from tests.conftest import Servers
from tests.integration.test_erp_import import Erp, body, isolated_erp, upload

pytestmark = pytest.mark.integration

DISPATCH_ID = "5b0c6a57-4a0e-4c1e-9d65-3f7f3c1c0001"


@pytest.fixture
async def erp(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, servers: Servers
) -> AsyncIterator[Erp]:
    async with isolated_erp(monkeypatch, tmp_path, servers) as found:
        yield found


async def _replica(erp: Erp, status: str = "shipped") -> None:
    """What the adapter learned of one dispatch from its events (written as its consumer does)."""
    await erp.db.execute(
        "INSERT INTO dispatch_replica (dispatch_id, order_id, status, version, carrier, "
        "tracking_number, lines, shipped_at) VALUES ($1, 'o-77', $2, 6, 'DHL', 'T-1', $3, now())",
        DISPATCH_ID, status,
        json.dumps([{"line_no": 1, "shipped_quantity": "4", "backorder_quantity": "1"}]))


async def test_a_record_about_spine_owned_fields_changes_nothing_and_is_one_conflict_per_value(
    erp: Erp,
) -> None:
    await _replica(erp)
    record = {"entity": "dispatch", "id": DISPATCH_ID,
              "fields": {"status": "delivered", "lines[1].shipped_quantity": "4.000",
                         "tracking_number": "T-9"}}
    async with erp.service() as client:
        headers = erp.token("integration")
        first = await client.post("/erp/records", headers=headers, json=record)
        assert first.status_code == 200, first.text
        answer = first.json()
        assert answer["applied"] == "none"
        # The shipped quantity only repeats Spine's: no conflict.
        assert [(n["field"], n["outcome"]) for n in answer["conflicts"]] == [
            ("status", "detected"), ("lines[1].shipped_quantity", "agrees"),
            ("tracking_number", "detected")]

        again = await client.post("/erp/records", headers=headers, json=record)
        assert [n["outcome"] for n in again.json()["conflicts"]] == [
            "repeated", "agrees", "repeated"]

        conflicts = (await client.get("/conflicts", headers=headers,
                                      params={"entity_id": DISPATCH_ID})).json()
        assert sorted((c["field"], c["erp_value"], c["spine_value"], c["spine_owner"],
                       c["occurrences"], c["status"]) for c in conflicts) == [
            ("status", "delivered", "shipped", "dispatch", 2, "open"),
            ("tracking_number", "T-9", "T-1", "dispatch", 2, "open")]
        assert all(c["order_id"] == "o-77" and c["erp_record"] == record["fields"]
                   for c in conflicts)

        detected = [body(m) for m in await erp.events(2)]
        assert {e["type"] for e in detected} == {"erp.conflict.detected"}
        assert {e["data"]["field"] for e in detected} == {"status", "tracking_number"}
        await erp.assert_no_more_events()

        # Spine's replica is untouched; each exchange has its log row; audit says what happened.
        assert await erp.db.fetchval("SELECT status FROM dispatch_replica") == "shipped"
        log = (await client.get("/integration-log", headers=headers,
                                params={"entity_id": DISPATCH_ID, "direction": "in"})).json()
        assert [(e["outcome"], e["connector"]) for e in log] == [("conflict", "http-records")] * 2
        assert log[0]["payload"] == record["fields"] and log[0]["order_id"] == "o-77"
        actions = [r["action"] for r in await erp.db.fetch(
            "SELECT action FROM audit_log ORDER BY id")]
        assert actions == ["erp.conflict.detected"] * 2 + ["erp.conflict.repeated"] * 2

        # The order's timeline at the adapter: both exchanges, oldest first.
        timeline = (await client.get("/timeline", headers=erp.token("ops"),
                                     params={"order_id": "o-77"})).json()
        assert [e["id"] for e in timeline["entries"]] == [e["id"] for e in reversed(log)]


async def test_a_conflict_is_resolved_once_and_a_claimed_correction_that_did_not_happen_reopens_it(
    erp: Erp,
) -> None:
    record = {"entity": "order", "id": "o-1", "fields": {"status": "invoiced"}}
    async with erp.service() as client:
        headers = erp.token("integration")
        answer = (await client.post("/erp/records", headers=headers, json=record)).json()
        [note] = answer["conflicts"]
        conflict_id = note["conflict_id"]
        found = (await client.get(f"/conflicts/{conflict_id}", headers=erp.token("ops"))).json()
        # The adapter keeps no copy of an order's status: the order service has it.
        assert (found["spine_value_known"], found["spine_value"], found["spine_owner"]) == (
            False, None, "order")

        refused = await client.post(f"/conflicts/{conflict_id}/resolve", headers=erp.token("ops"),
                                    json={"resolution": "keep_spine", "reason": "x"})
        assert refused.status_code == 403
        unknown = await client.post(f"/conflicts/{conflict_id}/resolve", headers=headers,
                                    json={"resolution": "keep_spine", "reason": "x", "by": "me"})
        assert unknown.status_code == 422
        resolved = await client.post(f"/conflicts/{conflict_id}/resolve", headers=headers,
                                     json={"resolution": "erp_corrected",
                                           "reason": "ERP team fixed the status mapping"})
        assert resolved.status_code == 200, resolved.text
        assert (resolved.json()["status"], resolved.json()["resolved_by"]) == (
            "resolved", "u-test")
        twice = await client.post(f"/conflicts/{conflict_id}/resolve", headers=headers,
                                  json={"resolution": "keep_spine", "reason": "again"})
        assert twice.status_code == 409
        assert twice.headers["content-type"] == "application/problem+json"
        assert "already resolved" in twice.json()["detail"]

        # The ERP sends the same value again: it did not correct it after all.
        again = (await client.post("/erp/records", headers=headers, json=record)).json()
        assert again["conflicts"][0]["outcome"] == "reopened"
        assert (await client.get("/conflicts", headers=headers,
                                 params={"status": "open"})).json()[0]["id"] == conflict_id
        events = [body(m) for m in await erp.events(2)]
        assert [e["data"]["reopened"] for e in events] == [False, True]
        assert await erp.count("conflict") == 1


async def test_the_erps_own_fields_are_applied_and_an_unknown_field_refuses_the_record(
    erp: Erp,
) -> None:
    async with erp.service() as client:
        headers = erp.token("integration")
        applied = await client.post("/erp/records", headers=headers, json={
            "entity": "customer", "id": "C-900", "fields": {"name": "Nordwerk", "active": True}})
        assert applied.json()["applied"] == "created", applied.text
        [event] = [body(m) for m in await erp.events(1)]
        assert (event["type"], event["data"]["name"]) == ("erp.customer.upserted", "Nordwerk")

        refused = await client.post("/erp/records", headers=headers, json={
            "entity": "customer", "id": "C-900", "fields": {"name": "Other", "colour": "red"}})
        assert refused.status_code == 422
        assert refused.json()["problems"] == [
            "fields.colour: not in the ownership registry for customer; ask for it to be added "
            "before sending it"]
        assert await erp.db.fetchval("SELECT name FROM erp_customer") == "Nordwerk"
        rejected = (await client.get("/integration-log", headers=headers,
                                     params={"status": "rejected"})).json()
        assert [(e["record_key"], e["payload"]) for e in rejected] == [
            ("C-900", {"name": "Other", "colour": "red"})]
        await erp.assert_no_more_events()


async def test_the_file_import_applies_the_erps_columns_and_turns_a_spine_owned_column_into_a_conflict(
    erp: Erp, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    # A plant whose order service decides delivery blocks: the ERP export still carries them.
    registry = json.loads(DEFAULT_OWNERSHIP.read_text())
    registry["fields"].append({"entity": "customer", "field": "delivery_block",
                               "owner": "order", "why": "Spine blocks deliveries"})
    path = tmp_path / "ownership.json"
    path.write_text(json.dumps(registry))
    erp.settings = erp.settings.model_copy(update={"ownership_file": path})
    export = b"customer_id,name,delivery_block,region\nC-1,Acme,yes,north\nC-2,Beta,,south\n"
    async with erp.service() as client:
        headers = erp.token("integration")
        for _ in range(2):
            report = await client.post("/imports", headers=headers,
                                       **upload("customers.csv", export))
            assert report.status_code == 200, report.text
        assert await erp.count("erp_customer") == 2
        [conflict] = (await client.get("/conflicts", headers=headers)).json()
        assert (conflict["entity_id"], conflict["field"], conflict["erp_value"],
                conflict["connector"], conflict["occurrences"]) == (
            "C-1", "delivery_block", "yes", "file-import", 2)
        events = sorted(body(m)["type"] for m in await erp.events(3))
        assert events == ["erp.conflict.detected", "erp.customer.upserted",
                          "erp.customer.upserted"]
        await erp.assert_no_more_events()
