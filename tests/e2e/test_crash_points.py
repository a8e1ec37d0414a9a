"""A service SIGKILLed at each named crash point leaves exactly one effect once restarted.

Each test restarts one service of its own stack with `SPINE_CRASH_AT=<point>` (see
`shared/crashpoints.py`), drives an order journey until the service kills itself there (exit
-9, the point named in its log), restarts it without the setting and then checks every
service's records: one order, one dispatch, each audit row once, each event in each consuming
queue's inbox once, every outbox row sent and no dead letter anywhere.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from shared.contracts.envelope import Actor, new_envelope
from shared.crashpoints import CrashPoint
from tests.e2e.conftest import ROOT, Stack
from tests.e2e.effects import Journey, assert_nothing_left_over, notification_observes, settled
from tests.e2e.test_order_to_shipped import sample_order

Move = tuple[str, str | None, str | None]  # audit action, from state, to state
RECEIVED: list[Move] = [("order.received", None, "received"), ("order.confirmed", "received", "confirmed")]
CREATED: list[Move] = [("dispatch.created", None, "pending")]
JOURNEY_EVENTS = Counter({"order.received": 1, "order.confirmed": 1, "dispatch.created": 1})


async def arm(stack: Stack, service: str, point: CrashPoint) -> None:
    """Restart `service` (after a clean stop) set to SIGKILL itself at `point`."""
    await assert_nothing_left_over(stack)  # quiet: the next pass of the point is the test's
    _, problem = await stack.terminate(service)
    assert problem is None, problem
    await stack.respawn(service, {"SPINE_CRASH_AT": point})


async def dies_at(stack: Stack, service: str, point: CrashPoint) -> None:
    """`service` kills itself at `point`; then it is started again without the setting."""
    code = await stack.exited(service, timeout_s=60)
    assert code == -signal.SIGKILL, f"{service} exited with {code}:\n{stack.log_tail(service, 40)}"
    assert f"crash point {point} reached: SIGKILL" in stack.log_tail(service, 5)
    await stack.respawn(service)


async def submit(stack: Stack, ref: str) -> tuple[str, str]:
    """Publish one order submission from the outside system `mes`; its correlation and event id."""
    envelope = new_envelope(type="ext.mes.order.submitted", producer="mes",
                            data=sample_order(ref), actor=Actor(id="mes", role="integration"))
    await stack.publish(envelope["type"], json.dumps(envelope).encode(),
                        message_id=envelope["event_id"])
    return str(envelope["correlation_id"]), str(envelope["event_id"])


def assert_one_journey(found: Journey, *, dispatch_audit: list[Move], events: Counter[str]) -> None:
    """One order, one dispatch, each audit row and event once, each inbox row once."""
    assert [o["status"] for o in found.orders] == ["confirmed"], found
    assert found.order_audit == RECEIVED
    assert len(found.dispatches) == 1, found.dispatches
    assert found.dispatch_audit == dispatch_audit
    assert found.published == events
    # The notification service keeps, once each, the events its rules name (and no other).
    assert found.observed == Counter({t: n for t, n in events.items()
                                      if notification_observes(t)})
    assert found.inbox == found.expected_inbox


async def inbox_rows(stack: Stack, service: str, message_id: str) -> int:
    conn = await asyncpg.connect(stack.dsn(service))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM inbox WHERE message_id = $1",
                                       message_id))
    finally:
        await conn.close()


async def test_an_http_transition_committed_but_not_yet_published_is_published_once_after_a_crash(
    module_stack: Stack,
) -> None:
    stack = module_stack
    correlation_id, _ = await submit(stack, f"MES-{uuid.uuid4().hex[:8]}")
    found = await settled(stack, correlation_id, JOURNEY_EVENTS)
    dispatch_id = str(found.dispatches[0]["id"])

    await arm(stack, "dispatch", "after-commit-before-publish")
    headers = {**stack.headers("planner"), "If-Match": '"1"'}
    async with httpx.AsyncClient(base_url=stack.url("dispatch"), timeout=30) as client:
        # The planner's request commits, then the service dies: the planner gets no answer.
        with pytest.raises(httpx.TransportError):
            await client.post(f"/dispatches/{dispatch_id}/transitions", json={"to": "released"},
                              headers=headers)
        await dies_at(stack, "dispatch", "after-commit-before-publish")

        found = await settled(stack, correlation_id, JOURNEY_EVENTS + Counter({"dispatch.released": 1}))
        assert_one_journey(found, dispatch_audit=[*CREATED, ("dispatch.released", "pending", "released")],
                           events=JOURNEY_EVENTS + Counter({"dispatch.released": 1}))
        assert [(d["status"], d["version"]) for d in found.dispatches] == [("released", 2)]
        # The planner, unanswered, tries again: the version it read is stale, nothing doubles.
        again = await client.post(f"/dispatches/{dispatch_id}/transitions",
                                  json={"to": "released"}, headers=headers)
        assert again.status_code == 412, again.text
    await assert_nothing_left_over(stack)


async def test_events_published_but_not_marked_sent_are_published_again_and_take_effect_once(
    module_stack: Stack,
) -> None:
    stack = module_stack
    await arm(stack, "order", "after-publish-before-mark")
    ref = f"MES-{uuid.uuid4().hex[:8]}"
    correlation_id, _ = await submit(stack, ref)
    await dies_at(stack, "order", "after-publish-before-mark")

    found = await settled(stack, correlation_id, JOURNEY_EVENTS)
    assert_one_journey(found, dispatch_audit=CREATED, events=JOURNEY_EVENTS)
    # The relay really published the confirmed order twice (same event id): before the kill
    # and after the restart; the dispatch and notification inboxes made the second a no-op.
    confirmed = await stack.events(lambda e: e["type"] == "order.confirmed"
                                   and e["data"].get("external_ref") == ref, count=2)
    assert len({e["event_id"] for e in confirmed}) == 1
    await assert_nothing_left_over(stack)


async def test_a_message_handled_but_not_yet_acked_is_redelivered_and_takes_effect_once(
    module_stack: Stack,
) -> None:
    stack = module_stack
    await arm(stack, "order", "after-commit-before-ack")
    correlation_id, submission_id = await submit(stack, f"MES-{uuid.uuid4().hex[:8]}")
    await dies_at(stack, "order", "after-commit-before-ack")

    found = await settled(stack, correlation_id, JOURNEY_EVENTS)
    # The redelivered submission met its inbox row: no second order, no "duplicate" audit row.
    assert_one_journey(found, dispatch_audit=CREATED, events=JOURNEY_EVENTS)
    assert await inbox_rows(stack, "order", submission_id) == 1
    await assert_nothing_left_over(stack)


async def test_a_mail_sent_but_not_recorded_is_sent_again_under_its_message_id_and_recorded_once(
    module_stack: Stack,
) -> None:
    stack = module_stack
    correlation_id, _ = await submit(stack, f"MES-{uuid.uuid4().hex[:8]}")
    found = await settled(stack, correlation_id, JOURNEY_EVENTS)
    dispatch_id = str(found.dispatches[0]["id"])
    # A short lease: the attempt the crash cuts short is taken again after it, not after 60 s.
    lease = {"SPINE_SENDER_LEASE_S": "8", "SPINE_SMTP_TIMEOUT_S": "4"}
    await assert_nothing_left_over(stack)
    _, problem = await stack.terminate("notification")
    assert problem is None, problem
    await stack.respawn("notification", {"SPINE_CRASH_AT": "after-outbound-before-record", **lease})

    async with httpx.AsyncClient(base_url=stack.url("dispatch"), timeout=30) as client:
        opened = await client.post(f"/dispatches/{dispatch_id}/exceptions", json={
            "reason_code": "stock_shortage", "owner": "u-nora", "blocking": False,
            "due_at": (datetime.now(UTC) + timedelta(hours=2)).isoformat()},
            headers=stack.headers("planner"))
        assert opened.status_code == 201, opened.text
    # The SMTP server took the mail, then the service died before writing `sent`.
    code = await stack.exited("notification", timeout_s=60)
    assert code == -signal.SIGKILL, stack.log_tail("notification", 40)
    [event] = await stack.events(lambda e: e["type"] == "dispatch.exception.opened"
                                 and e["data"]["dispatch_id"] == dispatch_id)
    assert len([m for m in stack.mails if m["X-Spine-Event-Id"] == event["event_id"]]) == 1
    await stack.respawn("notification", lease)

    [delivered] = await stack.events(lambda e: e["type"] == "notification.delivered"
                                     and e["data"]["event_id"] == event["event_id"], timeout=60)
    await asyncio.sleep(1.0)  # a third mail, or a second `delivered`, would have come by now
    mails = [m for m in stack.mails if m["X-Spine-Event-Id"] == event["event_id"]]
    # At least once, as documented: the same mail twice, under one Message-ID a mail system
    # can deduplicate by; recorded once, delivered once, never lost.
    assert len(mails) == 2 and mails[0]["Message-ID"] == mails[1]["Message-ID"], mails
    assert mails[0]["Message-ID"] == f"<{delivered['data']['delivery_id']}@spine.local>"
    assert delivered["data"]["attempts"] == 2
    assert len([e for e in stack.seen if e["type"] == "notification.delivered"
                and e["data"]["event_id"] == event["event_id"]]) == 1
    async with httpx.AsyncClient(base_url=stack.url("notification"), timeout=10) as client:
        deliveries = (await client.get("/deliveries", params={"event_id": event["event_id"]},
                                       headers=stack.headers("ops"))).json()
    assert sorted((d["channel"], d["status"], d["attempts"]) for d in deliveries) == [
        ("email", "sent", 2), ("inbox", "sent", 1)], deliveries
    await assert_nothing_left_over(stack)


def test_a_service_refuses_to_start_with_an_unknown_crash_point() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SPINE_CRASH_AT": "after-commit-before-ack,after-lunch"}
    done = subprocess.run([sys.executable, "-m", "services.notification.main"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    assert "SPINE_CRASH_AT names no crash point: after-lunch" in done.stdout + done.stderr
