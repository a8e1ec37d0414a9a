"""End to end, over real processes: an outside system's order becomes one dispatch, shipped."""

from __future__ import annotations

import asyncio
import csv
import json
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import httpx

from tests.e2e.conftest import ROOT, Stack


def sample_order(ref: str, **overrides: Any) -> dict[str, Any]:
    """An order for the first active customer and two active products of the sample export."""
    with open(ROOT / "samples/erp/customers.csv", newline="") as fh:
        customer = next(r for r in csv.DictReader(fh)
                        if r.get("active", "true").strip().lower() in ("true", "1", "yes", ""))
    raw = json.loads(Path(ROOT / "samples/erp/products.json").read_text())
    products = raw["products"] if isinstance(raw, dict) else raw
    active = [p for p in products if p.get("active", True) in (True, "true", 1)]
    order = {
        "external_ref": ref,
        "customer_id": customer["customer_id"],
        "requested_ship_date": "2026-12-15",
        "priority": "rush",
        "ship_to": {"name": "Acme Receiving", "street": "1 Dock Road", "city": "Linz",
                    "postal_code": "4020", "country": "AT"},
        "lines": [
            {"line_no": 1, "product_id": active[0]["product_id"], "quantity": "4",
             "uom": active[0]["uom"]},
            {"line_no": 2, "product_id": active[1]["product_id"], "quantity": "1.5",
             "uom": active[1]["uom"]},
        ],
        "confirmed": True,
    }
    order.update(overrides)
    return order


async def transition(
    client: httpx.AsyncClient, stack: Stack, dispatch_id: str, to: str, role: str,
    version: int, **body: Any,
) -> httpx.Response:
    return await client.post(
        f"/dispatches/{dispatch_id}/transitions",
        json={"to": to, **body},
        headers={**stack.headers(role), "If-Match": f'"{version}"'},
    )


async def test_an_order_published_three_times_becomes_one_dispatch_walked_to_shipped(
    stack: Stack,
) -> None:
    ref = f"MES-{uuid.uuid4().hex[:8]}"
    correlation_id = await stack.submit_order("mes", sample_order(ref), times=3)

    received = await stack.events(lambda e: e["type"] == "order.received"
                                  and e["data"].get("external_ref") == ref)
    order_id = received[0]["data"]["order_id"]
    created = await stack.events(lambda e: e["type"] == "dispatch.created"
                                 and e["data"]["order_id"] == order_id)
    dispatch_id = created[0]["data"]["dispatch_id"]
    # One trace for the journey: the dispatch service's span continues the order service's.
    def trace_of(event: dict[str, Any]) -> str:
        return str(event["_amqp"]["headers"]["traceparent"]).split("-")[1]
    assert trace_of(created[0]) == trace_of(received[0])

    async with httpx.AsyncClient(base_url=stack.url("dispatch"), timeout=10) as client:
        listed = await client.get("/dispatches", params={"order_id": order_id},
                                  headers=stack.headers("planner"))
        assert listed.status_code == 200
        assert [d["id"] for d in listed.json()] == [dispatch_id]

        got = await client.get(f"/dispatches/{dispatch_id}", headers=stack.headers("planner"))
        assert got.json()["status"] == "pending"
        assert got.headers["etag"] == '"1"'

        # Wrong roles are refused and change nothing.
        refused = await transition(client, stack, dispatch_id, "released", "warehouse", 1)
        assert refused.status_code == 403, refused.text
        no_token = await client.post(f"/dispatches/{dispatch_id}/transitions",
                                     json={"to": "released"})
        assert no_token.status_code == 401

        steps: list[tuple[str, str, dict[str, Any]]] = [
            ("released", "planner", {}),
            ("picking", "warehouse", {}),
            ("packed", "warehouse", {"evidence": {"lines": [
                {"line_no": 1, "quantity": "4"}, {"line_no": 2, "quantity": "1.5"}]}}),
            ("shipped", "shipping", {"evidence": {"carrier": "DHL",
                                                  "tracking_number": "00340434161094042557"}}),
        ]
        version = 1
        for to, role, body in steps:
            stale = await transition(client, stack, dispatch_id, to, role, version - 1, **body)
            assert stale.status_code == 412, stale.text
            moved = await transition(client, stack, dispatch_id, to, role, version, **body)
            assert moved.status_code == 200, moved.text
            version += 1
            assert moved.json() == {"id": dispatch_id, "order_id": order_id, "status": to,
                                    "version": version}

        too_late = await transition(client, stack, dispatch_id, "cancelled", "supervisor",
                                    version, reason="customer called")
        assert too_late.status_code == 409

        history = (await client.get(f"/dispatches/{dispatch_id}/history",
                                    headers=stack.headers("ops"))).json()

    moves = [(h["from_state"], h["to_state"], h["actor_role"]) for h in history]
    assert moves == [
        (None, "pending", "system"),
        ("pending", "released", "planner"),
        ("released", "picking", "warehouse"),
        ("picking", "packed", "warehouse"),
        ("packed", "shipped", "shipping"),
    ]
    for entry in history:
        assert entry["correlation_id"] == correlation_id
        assert entry["actor_id"] and entry["occurred_at"]

    for status in ("released", "picking", "packed", "shipped"):
        event = (await stack.events(lambda e, s=status: e["type"] == f"dispatch.{s}"
                                    and e["data"]["dispatch_id"] == dispatch_id))[0]
        assert event["correlation_id"] == correlation_id
        assert event["_amqp"]["message_id"] == event["event_id"]
        assert event["_amqp"]["delivery_mode"] == aio_pika.DeliveryMode.PERSISTENT
        assert "traceparent" in event["_amqp"]["headers"]
    # Three deliveries of one message: one order, one dispatch.
    assert len([e for e in stack.seen if e["type"] == "order.received"
                and e["data"].get("external_ref") == ref]) == 1
    assert len([e for e in stack.seen if e["type"] == "dispatch.created"
                and e["data"]["order_id"] == order_id]) == 1


async def test_a_transition_requested_within_a_trace_continues_it_through_outbox_and_broker(
    stack: Stack,
) -> None:
    ref = f"MES-{uuid.uuid4().hex[:8]}"
    await stack.submit_order("mes", sample_order(ref))
    received = await stack.events(lambda e: e["type"] == "order.received"
                                  and e["data"].get("external_ref") == ref)
    order_id = received[0]["data"]["order_id"]
    created = await stack.events(lambda e: e["type"] == "dispatch.created"
                                 and e["data"]["order_id"] == order_id)
    dispatch_id = created[0]["data"]["dispatch_id"]
    trace_id = uuid.uuid4().hex
    async with httpx.AsyncClient(base_url=stack.url("dispatch"), timeout=10) as client:
        moved = await client.post(
            f"/dispatches/{dispatch_id}/transitions", json={"to": "released"},
            headers={**stack.headers("planner"), "If-Match": '"1"',
                     "traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"},
        )
    assert moved.status_code == 200, moved.text
    released = (await stack.events(lambda e: e["type"] == "dispatch.released"
                                   and e["data"]["dispatch_id"] == dispatch_id))[0]
    assert str(released["_amqp"]["headers"]["traceparent"]).split("-")[1] == trace_id


async def test_the_same_external_ref_sent_again_as_a_new_message_creates_nothing_new(
    stack: Stack,
) -> None:
    ref = f"MES-{uuid.uuid4().hex[:8]}"
    await stack.submit_order("mes", sample_order(ref))
    received = await stack.events(lambda e: e["type"] == "order.received"
                                  and e["data"].get("external_ref") == ref)
    order_id = received[0]["data"]["order_id"]
    await stack.events(lambda e: e["type"] == "dispatch.created"
                       and e["data"]["order_id"] == order_id)
    await stack.submit_order("mes", sample_order(ref))  # a new event id, the same order
    async with httpx.AsyncClient(base_url=stack.url("order"), timeout=10) as client:
        orders = (await client.get("/orders", params={"external_ref": ref},
                                   headers=stack.headers("sales"))).json()
    assert [o["id"] for o in orders] == [order_id]
    async with httpx.AsyncClient(base_url=stack.url("dispatch"), timeout=10) as client:
        dispatches = (await client.get("/dispatches", params={"order_id": order_id},
                                       headers=stack.headers("planner"))).json()
    assert len(dispatches) == 1


async def test_an_invalid_order_is_answered_with_order_rejected_and_readable_reasons(
    stack: Stack,
) -> None:
    ref = f"MES-{uuid.uuid4().hex[:8]}"
    bad = sample_order(ref)
    bad["lines"][0]["quantity"] = "0"
    bad["lines"][1]["product_id"] = "P-DOES-NOT-EXIST"
    bad["ship_to"] = {"name": "Acme"}
    await stack.submit_order("mes", bad)
    rejected = (await stack.events(lambda e: e["type"] == "order.rejected"
                                   and e["data"].get("external_ref") == ref))[0]
    assert rejected["data"]["source"] == "mes"
    reasons = " | ".join(rejected["data"]["reasons"])
    assert "quantity" in reasons and "ship_to" in reasons
    # The contract problems do not hide the replica problems: one answer lists them all.
    assert "product P-DOES-NOT-EXIST is unknown" in reasons
    assert all(isinstance(r, str) and len(r) > 10 for r in rejected["data"]["reasons"])
    async with httpx.AsyncClient(base_url=stack.url("order"), timeout=10) as client:
        orders = (await client.get("/orders", params={"external_ref": ref},
                                   headers=stack.headers("sales"))).json()
    assert orders == []


async def test_a_garbage_message_lands_in_the_dead_letter_queue_with_its_reason(
    stack: Stack,
) -> None:
    message_id = str(uuid.uuid4())
    await stack.publish("ext.mes.order.submitted", b"{this is not json", message_id=message_id)
    assert stack.connection is not None
    channel = await stack.connection.channel()
    dlq = await channel.declare_queue(f"{stack.namespace}.order.order-submitted.dlq", passive=True)
    found = None
    for _ in range(100):
        message = await dlq.get(no_ack=False, fail=False)
        if message is not None:
            if message.message_id == message_id:
                found = message
                await message.ack()
                break
            await message.nack(requeue=True)
        await asyncio.sleep(0.1)
    await channel.close()
    assert found is not None, "the garbage message did not reach the dead-letter queue"
    reason = str(found.headers["x-spine-error"])
    assert reason and "json" in reason.lower()


async def test_no_service_restarted_or_logged_a_traceback(stack: Stack) -> None:
    for name, proc in stack.procs.items():
        assert proc.poll() is None, f"{name} is no longer running"
    text = stack.log_text()
    assert "Traceback" not in text, text[-5000:]
