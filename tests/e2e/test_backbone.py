"""End to end, over real processes: exceptions escalate across a restart, four eyes decide.

Each journey starts as an outside system's order on the broker and is walked through the
dispatch service's HTTP API; what the services say is read from the broker, as the plant's
other systems would read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.e2e.conftest import Stack
from tests.e2e.test_order_to_shipped import sample_order


async def _dispatch_of_new_order(stack: Stack) -> str:
    ref = f"MES-{uuid.uuid4().hex[:8]}"
    await stack.submit_order("mes", sample_order(ref))
    received = await stack.events(lambda e: e["type"] == "order.received"
                                  and e["data"].get("external_ref") == ref)
    order_id = received[0]["data"]["order_id"]
    created = await stack.events(lambda e: e["type"] == "dispatch.created"
                                 and e["data"]["order_id"] == order_id)
    return str(created[0]["data"]["dispatch_id"])


async def _move(client: httpx.AsyncClient, stack: Stack, dispatch_id: str, to: str, role: str,
                *, sub: str | None = None, **body: Any) -> httpx.Response:
    current = await client.get(f"/dispatches/{dispatch_id}", headers=stack.headers("ops"))
    return await client.post(f"/dispatches/{dispatch_id}/transitions", json={"to": to, **body},
                             headers={**stack.headers(role, sub=sub),
                                      "If-Match": current.headers["etag"]})


async def _to_picking(client: httpx.AsyncClient, stack: Stack, dispatch_id: str) -> None:
    for to, role in (("released", "planner"), ("picking", "warehouse")):
        moved = await _move(client, stack, dispatch_id, to, role)
        assert moved.status_code == 200, moved.text


def _of(dispatch_id: str, kind: str) -> Any:
    return lambda e: e["type"] == kind and e["data"].get("dispatch_id") == dispatch_id


async def _all_of(stack: Stack, dispatch_id: str, kind: str, *, for_s: float) -> int:
    """How many `kind` events of the dispatch the broker carried, reading for `for_s` more."""
    with contextlib.suppress(AssertionError):  # no count is ever reached: it reads to the end
        await stack.events(_of(dispatch_id, kind), count=10**6, timeout=for_s)
    return len([e for e in stack.seen if _of(dispatch_id, kind)(e)])


async def test_an_exception_due_while_the_dispatch_service_is_down_is_escalated_once_after(
    stack: Stack,
) -> None:
    dispatch_id = await _dispatch_of_new_order(stack)
    due = datetime.now(UTC) + timedelta(seconds=2)
    async with httpx.AsyncClient(base_url=stack.url("dispatch"), timeout=10) as client:
        opened = await client.post(f"/dispatches/{dispatch_id}/exceptions", json={
            "reason_code": "stock_shortage", "owner": "u-anna", "due_at": due.isoformat(),
            "blocking": True}, headers=stack.headers("planner"))
        assert opened.status_code == 201, opened.text
    exception_id = opened.json()["id"]
    await stack.events(_of(dispatch_id, "dispatch.exception.opened"))
    # Killed before it is due: no timer in memory can carry the escalation over the restart.
    stack.procs["dispatch"].send_signal(signal.SIGKILL)
    assert await stack.exited("dispatch", timeout_s=15) == -signal.SIGKILL
    await asyncio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()) + 0.5)
    await stack.respawn("dispatch", {"SPINE_ESCALATION_INTERVAL_S": "0.5"})
    [escalated] = await stack.events(_of(dispatch_id, "dispatch.exception.escalated"),
                                     timeout=30)
    assert (escalated["data"]["owner"], escalated["data"]["escalated_from"]) == (
        "role:supervisor", "u-anna")
    # Four more ticks: none may escalate it again.
    assert await _all_of(stack, dispatch_id, "dispatch.exception.escalated", for_s=2.0) == 1
    async with httpx.AsyncClient(base_url=stack.url("dispatch"), timeout=10) as client:
        shown = await client.get(f"/exceptions/{exception_id}", headers=stack.headers("ops"))
    assert shown.json()["status"] == "escalated"


async def test_cancelling_after_picking_needs_a_second_supervisor_end_to_end(stack: Stack) -> None:
    dispatch_id = await _dispatch_of_new_order(stack)
    async with httpx.AsyncClient(base_url=stack.url("dispatch"), timeout=10) as client:
        await _to_picking(client, stack, dispatch_id)
        asked = await _move(client, stack, dispatch_id, "cancelled", "supervisor", sub="u-sara",
                            reason="customer withdrew")
        assert asked.status_code == 202, asked.text
        location = asked.headers["location"]
        own = await client.post(f"{location}/approve", json={},
                                headers=stack.headers("supervisor", sub="u-sara"))
        assert own.status_code == 403, own.text
        approved = await client.post(f"{location}/approve", json={"comment": "confirmed by phone"},
                                     headers=stack.headers("supervisor", sub="u-otto"))
        assert approved.status_code == 200, approved.text
        history = (await client.get(f"/dispatches/{dispatch_id}/history",
                                    headers=stack.headers("ops"))).json()
    [cancelled] = await stack.events(_of(dispatch_id, "dispatch.cancelled"))
    assert cancelled["data"]["approval"]["requested_by"] == "u-sara"
    assert cancelled["data"]["approval"]["approved_by"] == "u-otto"
    assert cancelled["actor"] == {"id": "u-otto", "role": "supervisor"}
    assert [h["action"] for h in history][-3:] == [
        "dispatch.approval.requested", "dispatch.approval.approved", "dispatch.cancelled"]


async def test_a_short_pack_is_approved_and_shipped_with_its_backorder_end_to_end(
    stack: Stack,
) -> None:
    dispatch_id = await _dispatch_of_new_order(stack)
    async with httpx.AsyncClient(base_url=stack.url("dispatch"), timeout=10) as client:
        await _to_picking(client, stack, dispatch_id)
        asked = await _move(client, stack, dispatch_id, "packed", "warehouse", evidence={
            "lines": [{"line_no": 1, "quantity": "3"}, {"line_no": 2, "quantity": "1.5"}]})
        assert asked.status_code == 202 and asked.json()["kind"] == "short_pack", asked.text
        approved = await client.post(f"{asked.headers['location']}/approve", json={},
                                     headers=stack.headers("supervisor", sub="u-otto"))
        assert approved.status_code == 200, approved.text
        shipped = await _move(client, stack, dispatch_id, "shipped", "shipping",
                              evidence={"carrier": "DHL", "tracking_number": "JD01"})
        assert shipped.status_code == 200, shipped.text
    for kind in ("dispatch.packed", "dispatch.shipped"):
        [event] = await stack.events(_of(dispatch_id, kind))
        assert event["data"]["backorder"] == [{"line_no": 1, "quantity": "1"}], kind


async def test_a_correction_after_shipping_is_approved_and_published_end_to_end(
    stack: Stack,
) -> None:
    dispatch_id = await _dispatch_of_new_order(stack)
    async with httpx.AsyncClient(base_url=stack.url("dispatch"), timeout=10) as client:
        await _to_picking(client, stack, dispatch_id)
        for to, role, evidence in (
            ("packed", "warehouse", {"lines": [{"line_no": 1, "quantity": "4"},
                                               {"line_no": 2, "quantity": "1.5"}]}),
            ("shipped", "shipping", {"carrier": "DHL", "tracking_number": "JD01"}),
        ):
            moved = await _move(client, stack, dispatch_id, to, role, evidence=evidence)
            assert moved.status_code == 200, moved.text
        asked = await client.post(f"/dispatches/{dispatch_id}/corrections", json={
            "changes": [{"field": "carrier", "to": "UPS"}], "reason": "booked with UPS"},
            headers=stack.headers("shipping", sub="u-sam"))
        assert asked.status_code == 202, asked.text
        approved = await client.post(f"{asked.headers['location']}/approve", json={},
                                     headers=stack.headers("supervisor", sub="u-otto"))
        assert approved.status_code == 200, approved.text
        shown = (await client.get(f"/dispatches/{dispatch_id}", headers=stack.headers("sales"))
                 ).json()
    assert shown["facts"]["carrier"] == "UPS"
    assert [c["approved_by"] for c in shown["corrections"]] == ["u-otto"]
    [corrected] = await stack.events(_of(dispatch_id, "dispatch.corrected"))
    assert corrected["data"]["changes"] == [
        {"field": "carrier", "line_no": None, "from": "DHL", "to": "UPS"}]
    assert (corrected["data"]["requested_by"], corrected["data"]["approved_by"]) == (
        "u-sam", "u-otto")


async def test_people_acting_at_once_on_the_running_service_have_exactly_one_winner(
    stack: Stack,
) -> None:
    dispatch_id = await _dispatch_of_new_order(stack)
    # One client per person: separate connections to the service process, fired together.
    clients = [httpx.AsyncClient(base_url=stack.url("dispatch"), timeout=10) for _ in range(6)]
    try:
        answers = await asyncio.gather(*(c.post(
            f"/dispatches/{dispatch_id}/transitions", json={"to": "released"},
            headers={**stack.headers("planner", sub=f"u-{i}"), "If-Match": '"1"'})
            for i, c in enumerate(clients)))
        assert sorted(a.status_code for a in answers) == [200] + [412] * 5
        await _to_picking_from_released(clients[0], stack, dispatch_id)
        asked = await _move(clients[0], stack, dispatch_id, "cancelled", "supervisor",
                            sub="u-sara", reason="customer withdrew")
        location = asked.headers["location"]
        decisions = await asyncio.gather(*(c.post(
            f"{location}/approve", json={},
            headers=stack.headers("supervisor", sub=f"u-boss-{i}"))
            for i, c in enumerate(clients)))
        assert sorted(d.status_code for d in decisions) == [200] + [409] * 5
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    await stack.events(_of(dispatch_id, "dispatch.cancelled"))
    for kind in ("dispatch.released", "dispatch.approval.approved", "dispatch.cancelled"):
        assert await _all_of(stack, dispatch_id, kind, for_s=1.0) == 1, kind


async def _to_picking_from_released(client: httpx.AsyncClient, stack: Stack,
                                    dispatch_id: str) -> None:
    moved = await _move(client, stack, dispatch_id, "picking", "warehouse")
    assert moved.status_code == 200, moved.text


async def test_an_exception_opened_over_http_mails_its_owner_once_and_fills_their_inbox(
    stack: Stack,
) -> None:
    dispatch_id = await _dispatch_of_new_order(stack)
    async with httpx.AsyncClient(base_url=stack.url("dispatch"), timeout=10) as client:
        opened = await client.post(f"/dispatches/{dispatch_id}/exceptions", json={
            "reason_code": "stock_shortage", "owner": "u-nora",
            "due_at": (datetime.now(UTC) + timedelta(hours=2)).isoformat(), "blocking": False},
            headers=stack.headers("planner"))
        assert opened.status_code == 201, opened.text
    [event] = await stack.events(_of(dispatch_id, "dispatch.exception.opened"))
    [delivered] = await stack.events(
        lambda e: e["type"] == "notification.delivered"
        and e["data"]["event_id"] == event["event_id"])
    assert delivered["causation_id"] == event["event_id"]
    async with httpx.AsyncClient(base_url=stack.url("notification"), timeout=10) as client:
        deliveries = (await client.get("/deliveries", params={"event_id": event["event_id"]},
                                       headers=stack.headers("ops"))).json()
        assert sorted((d["recipient"], d["channel"], d["status"], d["event_id"])
                      for d in deliveries) == [
            ("user:u-nora", "email", "sent", event["event_id"]),
            ("user:u-nora", "inbox", "sent", event["event_id"])]
        inbox = (await client.get("/inbox", headers=stack.headers("warehouse", sub="u-nora"))
                 ).json()
    assert [e["event_id"] for e in inbox["entries"]] == [event["event_id"]]
    assert inbox["unread"] == 1
    await asyncio.sleep(1.0)  # a second mail would have come by now
    mails = [m for m in stack.mails if m["X-Spine-Event-Id"] == event["event_id"]]
    [mail] = mails
    [email_delivery] = [d for d in deliveries if d["channel"] == "email"]
    assert mail["To"] == "nora.lind@plant.example"
    assert mail["Message-ID"] == f"<{email_delivery['id']}@spine.local>"
    assert delivered["data"]["delivery_id"] == email_delivery["id"]
