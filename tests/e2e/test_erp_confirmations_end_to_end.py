"""End to end, over real processes: a dispatch shipped over HTTP becomes a confirmation file.

The erp_adapter runs the file connector into a folder of this test; its mode is switched to
`auto` over HTTP while it runs. A crash between writing the file and recording it makes the
restarted adapter write the same file (same name, same idempotency key) again, never a second.
"""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import Servers, unique_name
from tests.e2e.conftest import Stack, running_stack
from tests.e2e.test_order_to_shipped import sample_order

EXPORT_KEY = "export"


@pytest.fixture(scope="module")
async def erp_stack(servers: Servers, tmp_path_factory: pytest.TempPathFactory
                    ) -> AsyncIterator[Stack]:
    export = tmp_path_factory.mktemp("erp-export")
    async with running_stack(servers, unique_name(), tmp_path_factory.mktemp("stack-logs"), {
        "SPINE_ERP_CONNECTOR": "file", "SPINE_ERP_EXPORT_DIR": str(export),
        "SPINE_ERP_PUSH_INTERVAL_S": "0.2", "SPINE_ERP_CLAIM_LEASE_S": "2",
    }) as running:
        running.extra_env[EXPORT_KEY] = str(export)  # for the tests; no service reads it
        yield running


def export_dir(stack: Stack) -> Path:
    return Path(stack.extra_env[EXPORT_KEY])


async def ship_new_order(stack: Stack) -> tuple[str, str]:
    """An outside system's order walked to `shipped` over HTTP; (dispatch id, shipped event id)."""
    ref = f"MES-{uuid.uuid4().hex[:8]}"
    await stack.submit_order("mes", sample_order(ref))
    received = await stack.events(lambda e: e["type"] == "order.received"
                                  and e["data"].get("external_ref") == ref)
    order_id = received[0]["data"]["order_id"]
    created = await stack.events(lambda e: e["type"] == "dispatch.created"
                                 and e["data"]["order_id"] == order_id)
    dispatch_id = created[0]["data"]["dispatch_id"]
    steps: list[tuple[str, str, dict[str, Any]]] = [
        ("released", "planner", {}), ("picking", "warehouse", {}),
        ("packed", "warehouse", {"evidence": {"lines": [
            {"line_no": 1, "quantity": "4"}, {"line_no": 2, "quantity": "1"}]}}),
        ("shipped", "shipping", {"evidence": {"carrier": "DHL", "tracking_number": "JJD0001"}}),
    ]
    async with httpx.AsyncClient(base_url=stack.url("dispatch"), timeout=10) as client:
        for to, role, body in steps:
            current = await client.get(f"/dispatches/{dispatch_id}", headers=stack.headers("ops"))
            moved = await client.post(
                f"/dispatches/{dispatch_id}/transitions", json={"to": to, **body},
                headers={**stack.headers(role), "If-Match": current.headers["etag"]})
            # A short pack needs a second person: approve it and carry on.
            if moved.status_code == 202:
                approval = moved.json()["id"]
                async with httpx.AsyncClient(base_url=stack.url("dispatch"),
                                             timeout=10) as approver:
                    done = await approver.post(f"/approvals/{approval}/approve",
                                               json={"comment": "ok"},
                                               headers=stack.headers("supervisor", sub="u-boss"))
                    assert done.status_code == 200, done.text
                continue
            assert moved.status_code == 200, moved.text
    shipped = await stack.events(lambda e: e["type"] == "dispatch.shipped"
                                 and e["data"]["dispatch_id"] == dispatch_id)
    return dispatch_id, str(shipped[0]["event_id"])


async def set_mode(stack: Stack, mode: str) -> None:
    async with httpx.AsyncClient(base_url=stack.url("erp_adapter"), timeout=10) as client:
        answer = await client.put("/connectors/file", json={"mode": mode},
                                  headers=stack.headers("integration"))
        assert answer.status_code == 200, answer.text


def files_of(stack: Stack, event_id: str) -> list[Path]:
    return sorted(p for p in export_dir(stack).glob(f"*-{event_id}.json"))


async def confirmation(stack: Stack, event_id: str) -> asyncpg.Record | None:
    conn = await asyncpg.connect(stack.dsn("erp_adapter"))
    try:
        return await conn.fetchrow("SELECT * FROM confirmation WHERE event_id = $1",
                                   uuid.UUID(event_id))
    finally:
        await conn.close()


async def test_a_dispatch_shipped_over_http_becomes_one_confirmation_file_in_auto_mode(
    erp_stack: Stack,
) -> None:
    stack = erp_stack
    await set_mode(stack, "auto")
    dispatch_id, event_id = await ship_new_order(stack)
    posted = await stack.events(lambda e: e["type"] == "erp.confirmation.posted"
                                and e["data"]["dispatch_id"] == dispatch_id, timeout=30)
    assert posted[0]["data"]["idempotency_key"] == event_id
    [written] = files_of(stack, event_id)
    document = json.loads(written.read_text())
    assert (document["confirmation"], document["dispatch_id"], document["tracking_number"]) == (
        "shipped", dispatch_id, "JJD0001")
    assert document["idempotency_key"] == event_id
    assert [(x["line_no"], x["shipped_quantity"]) for x in document["lines"]] == [(1, "4"),
                                                                               (2, "1")]
    assert not [p for p in export_dir(stack).iterdir() if p.name.startswith(".")]


async def test_a_crash_between_writing_a_confirmation_and_recording_it_rewrites_the_same_file(
    erp_stack: Stack,
) -> None:
    stack = erp_stack
    await set_mode(stack, "auto")
    code, problem = await stack.terminate("erp_adapter")
    assert code == 0 and problem is None, problem
    await stack.respawn("erp_adapter", {"SPINE_CRASH_AT": "after-outbound-before-record"})
    dispatch_id, event_id = await ship_new_order(stack)

    code = await stack.exited("erp_adapter", timeout_s=60)
    assert code == -signal.SIGKILL, stack.log_tail("erp_adapter", 40)
    [first] = files_of(stack, event_id)  # written, not recorded
    content = first.read_bytes()
    await stack.respawn("erp_adapter")

    await stack.events(lambda e: e["type"] == "erp.confirmation.posted"
                       and e["data"]["dispatch_id"] == dispatch_id, timeout=30)
    found = await confirmation(stack, event_id)
    assert found is not None
    assert (found["status"], found["attempts"]) == ("posted", 2)
    # The ERP sees the same idempotency key in the same file again, not a second file.
    assert files_of(stack, event_id) == [first] and first.read_bytes() == content
    await asyncio.sleep(1)
    assert len([e for e in stack.seen if e["type"] == "erp.confirmation.posted"
                and e["data"]["dispatch_id"] == dispatch_id]) == 1


async def until_recorded(stack: Stack, event_id: str, timeout: float = 30.0) -> asyncpg.Record:
    deadline = asyncio.get_running_loop().time() + timeout
    while (row := await confirmation(stack, event_id)) is None:
        assert asyncio.get_running_loop().time() < deadline, f"no confirmation of {event_id}"
        await asyncio.sleep(0.1)
    return row


async def test_each_mode_gives_its_form_and_a_correction_after_shipping_a_corrected_confirmation(
    erp_stack: Stack,
) -> None:
    stack = erp_stack
    # shadow: what would be sent is recorded, nothing is written.
    await set_mode(stack, "shadow")
    _, shadowed = await ship_new_order(stack)
    assert (await until_recorded(stack, shadowed))["status"] == "shadowed"
    # approve: it waits for a person with the integration role.
    await set_mode(stack, "approve")
    _, awaiting = await ship_new_order(stack)
    waiting = await until_recorded(stack, awaiting)
    assert waiting["status"] == "awaiting_approval"
    await asyncio.sleep(1.0)  # the push worker looked several times meanwhile
    assert files_of(stack, shadowed) == [] and files_of(stack, awaiting) == []
    async with httpx.AsyncClient(base_url=stack.url("erp_adapter"), timeout=10) as client:
        approved = await client.post(f"/confirmations/{waiting['id']}/approve",
                                     headers=stack.headers("integration"))
        assert approved.status_code == 200, approved.text
    await stack.events(lambda e: e["type"] == "erp.confirmation.posted"
                       and e["data"]["idempotency_key"] == awaiting, timeout=30)
    assert len(files_of(stack, awaiting)) == 1

    # auto, and a correction after shipping (four eyes on the dispatch service).
    await set_mode(stack, "auto")
    dispatch_id, shipped = await ship_new_order(stack)
    async with httpx.AsyncClient(base_url=stack.url("dispatch"), timeout=10) as client:
        asked = await client.post(f"/dispatches/{dispatch_id}/corrections", json={
            "changes": [{"field": "tracking_number", "to": "JJD0002"}],
            "reason": "the label was misprinted"}, headers=stack.headers("shipping"))
        assert asked.status_code == 202, asked.text
        decided = await client.post(f"/approvals/{asked.json()['id']}/approve",
                                    json={"comment": "checked"},
                                    headers=stack.headers("supervisor", sub="u-boss"))
        assert decided.status_code == 200, decided.text
    [corrected] = await stack.events(lambda e: e["type"] == "dispatch.corrected"
                                     and e["data"]["dispatch_id"] == dispatch_id)
    await stack.events(lambda e: e["type"] == "erp.confirmation.posted"
                       and e["data"]["idempotency_key"] == corrected["event_id"], timeout=30)
    [first] = files_of(stack, shipped)
    [second] = files_of(stack, str(corrected["event_id"]))
    assert json.loads(first.read_text())["tracking_number"] == "JJD0001"
    document = json.loads(second.read_text())
    assert (document["confirmation"], document["tracking_number"]) == ("corrected", "JJD0002")
    # Files sort in the order they must be imported: the shipment before its correction.
    assert sorted([second.name, first.name]) == [first.name, second.name]
