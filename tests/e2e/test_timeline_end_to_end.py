"""End to end, over real processes: `./spine timeline` tells one order's story from every service.

An outside system's order is received and confirmed, its dispatch is created, an exception is
opened on it over HTTP and its owner is told (inbox and mail); the CLI, run as a process with
the stack's URLs and secret, finds the order by its external reference and merges the four
services' `GET /timeline` parts into one story in the order it happened.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.e2e.conftest import ROOT, Stack
from tests.e2e.test_order_to_shipped import sample_order


async def _spine(stack: Stack, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SPINE_JWT_SECRET": stack.secret,
           "SPINE_ORDER_URL": stack.url("order"), "SPINE_DISPATCH_URL": stack.url("dispatch"),
           "SPINE_NOTIFICATION_URL": stack.url("notification"),
           "SPINE_ERP_ADAPTER_URL": stack.url("erp_adapter")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "spine_cli", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_timeline_of_an_order_tells_received_confirmed_dispatched_exception_and_deliveries(
    stack: Stack,
) -> None:
    ref = f"MES-{uuid.uuid4().hex[:8]}"
    await stack.submit_order("mes", sample_order(ref))
    [received] = await stack.events(lambda e: e["type"] == "order.received"
                                    and e["data"].get("external_ref") == ref)
    order_id = received["data"]["order_id"]
    [created] = await stack.events(lambda e: e["type"] == "dispatch.created"
                                   and e["data"]["order_id"] == order_id)
    dispatch_id = created["data"]["dispatch_id"]
    async with httpx.AsyncClient(base_url=stack.url("dispatch"), timeout=10) as client:
        opened = await client.post(f"/dispatches/{dispatch_id}/exceptions", json={
            "reason_code": "stock_shortage", "owner": "u-nora", "description": "bin empty",
            "due_at": (datetime.now(UTC) + timedelta(hours=2)).isoformat(), "blocking": False},
            headers=stack.headers("planner", sub="u-pia"))
        assert opened.status_code == 201, opened.text
    [event] = await stack.events(lambda e: e["type"] == "dispatch.exception.opened"
                                 and e["data"].get("dispatch_id") == dispatch_id)
    await stack.events(lambda e: e["type"] == "notification.delivered"
                       and e["data"]["event_id"] == event["event_id"])

    code, out, err = await _spine(stack, "timeline", ref, "--source", "mes", "--json")
    assert (code, err) == (0, ""), out + err
    story: list[dict[str, Any]] = [json.loads(line) for line in out.splitlines()]
    steps = [(e["service"], e["action"]) for e in story]
    wanted = [("order", "order.received"), ("order", "order.confirmed"),
              ("dispatch", "dispatch.created"), ("dispatch", "dispatch.exception.opened"),
              ("notification", "notification.created"), ("notification", "notification.delivered")]
    positions = [steps.index(step) for step in wanted]
    assert positions == sorted(positions), steps
    assert _in_time_order(story), steps

    exception = story[positions[3]]
    assert (exception["actor_id"], exception["actor_role"], exception["to_state"]) == (
        "u-pia", "planner", "open")
    assert exception["details"]["exception_id"] == opened.json()["id"]
    assert len(exception["trace_id"]) == 32  # a request in a span, its outbox row kept the trace
    deliveries = {(e["details"]["recipient"], e["details"]["channel"], e["details"]["status"])
                  for e in story if e["service"] == "notification"}
    assert deliveries == {("user:u-nora", "inbox", "sent"), ("user:u-nora", "email", "sent")}
    delivered = story[positions[5]]
    assert (delivered["details"]["channel"], delivered["from_state"], delivered["to_state"]) == (
        "email", "pending", "sent")
    assert all(e["details"].get("event_id") == event["event_id"]
               for e in story if e["service"] == "notification")

    # The table names every part, and the order by its id as well as by its reference.
    code, table, err = await _spine(stack, "timeline", order_id)
    assert (code, err) == (0, ""), table + err
    assert table.splitlines()[0].startswith(f"order {order_id}: {len(story)} entries")
    assert "u-pia (planner)" in table and "· → open" in table


def _in_time_order(story: list[dict[str, Any]]) -> bool:
    """Whether the story is in time order once the instants' spellings are parsed."""
    instants = [datetime.fromisoformat(e["occurred_at"].replace("Z", "+00:00")) for e in story]
    return instants == sorted(instants)
