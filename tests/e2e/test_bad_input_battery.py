"""Bad input, mixed with good, over real processes: every bad message is dead-lettered with its
reason (and an outside system's is answered), every good one has exactly one effect.

Each case says where its message must end: which dead-letter queue and with what reason, and
whether its sender must read an `order.rejected` naming the problem. A case that is refused
for a business reason (an unknown customer) is answered and audited, not dead-lettered: the
message is well formed, and there is nothing for operations to repair or replay.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aio_pika
import httpx

from shared.contracts.envelope import Actor, new_envelope
from shared.messaging.permissions import broker_user
from shared.messaging.topology import ERROR_HEADER
from tests.e2e.conftest import Stack
from tests.e2e.test_order_to_shipped import sample_order

SUBMITTED = "ext.mes.order.submitted"
SUBMISSIONS_DLQ = "order.order-submitted.dlq"
CONFIRMED_DLQ = "dispatch.order-confirmed.dlq"


@dataclass
class Case:
    """One message, and what must become of it."""

    kind: str
    body: bytes
    routing_key: str = SUBMITTED
    message_id: str | None = None  # None: no AMQP message_id at all
    content_type: str = "application/json"
    dead_letter: str | None = SUBMISSIONS_DLQ  # the dead-letter queue it must reach, if any
    reason: str = ""  # in its dead letter's reason, and in its answer's reasons
    answered: bool = True  # an `order.rejected` for it: caused by its id, or naming its ref


def envelope(data: Any, *, event_id: str, type: str = SUBMITTED, **fields: Any) -> dict[str, Any]:
    body = new_envelope(type=type, producer=type.split(".")[1] if type.startswith("ext.") else
                        fields.pop("producer", "order"), data=data,
                        actor=Actor(id="mes-gateway", role="integration"))
    body["event_id"] = event_id
    body.update(fields)
    return body


def encoded(body: Any) -> bytes:
    return json.dumps(body).encode()


def order(ref: str, **changes: Any) -> dict[str, Any]:
    return sample_order(ref, **changes)


def line_with(**changes: Any) -> list[dict[str, Any]]:
    lines = sample_order("x")["lines"]
    lines[0] = {**lines[0], **changes}
    return lines


def bad_cases(run: str) -> list[Case]:
    """At least 25 kinds of bad message; `run` keeps this run's references apart."""
    cases: list[Case] = []

    def add(kind: str, body: bytes | None = None, *, data: Any = None, **fields: Any) -> None:
        message_id = fields.pop("message_id", str(uuid.uuid4()))
        if body is None:
            changes = dict(fields.pop("envelope", {}))
            event_id = changes.pop("event_id", message_id or str(uuid.uuid4()))
            body = encoded(envelope(data if data is not None else order(f"{run}-{kind}"),
                                    event_id=event_id, **changes))
        cases.append(Case(kind, body, message_id=message_id, **fields))

    add("not-json", b"{this is not json", reason="body is not JSON")
    add("not-utf8", b'{"data": "\xff\xfe"}', reason="body is not JSON")
    add("not-an-object", b'["an", "array"]', reason="not a JSON object")
    add("plain-text", encoded(envelope(order(f"{run}-plain-text"), event_id=str(uuid.uuid4()))),
        content_type="text/plain", reason="not a JSON object")
    add("deep-nesting", b'{"data": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        reason="nested too deeply")
    add("oversized", encoded({"data": {"note": "x" * (1024 * 1024 + 10)}}),
        reason="over the limit")
    missing_id = envelope(order(f"{run}-missing-event-id"), event_id="x")
    del missing_id["event_id"]
    add("missing-event-id", encoded(missing_id), reason="event_id")
    add("event-id-not-uuid", None, envelope={"event_id": "not-a-uuid"}, reason="event_id",
        message_id="not-a-uuid")
    add("missing-data", encoded({k: v for k, v in envelope({}, event_id="x").items()
                                 if k != "data"} | {"event_id": (i := str(uuid.uuid4()))}),
        message_id=i, reason="data")
    add("actor-wrong-type", None, envelope={"actor": 7}, reason="actor")
    add("occurred-at-not-a-time", None, envelope={"occurred_at": "yesterday"},
        reason="occurred_at")
    add("correlation-not-uuid", None, envelope={"correlation_id": 12}, reason="correlation_id")
    add("unknown-version", None, envelope={"version": 2}, reason="version 2 is not supported")
    add("version-as-text", None, envelope={"version": "1"}, reason="is not supported")
    add("type-differs-from-key", None, envelope={"type": "ext.mes.order.cancelled"},
        reason="differs from its routing key")
    add("data-not-an-object", None, data=["not", "an", "order"], reason="data")
    add("missing-lines", None, data={k: v for k, v in order(f"{run}-missing-lines").items()
                                     if k != "lines"}, reason="lines")
    add("negative-quantity", None,
        data=order(f"{run}-negative-quantity", lines=line_with(quantity="-2")), reason="quantity")
    add("zero-quantity", None,
        data=order(f"{run}-zero-quantity", lines=line_with(quantity="0")), reason="quantity")
    add("absurd-quantity", None,
        data=order(f"{run}-absurd-quantity", lines=line_with(quantity="1" + "0" * 30)), reason="quantity")
    add("too-many-decimals", None,
        data=order(f"{run}-too-many-decimals", lines=line_with(quantity="1.23456")), reason="decimal places")
    add("quantity-not-a-number", None,
        data=order(f"{run}-quantity-not-a-number", lines=line_with(quantity="lots")), reason="quantity")
    add("bad-ship-date", None, data=order(f"{run}-bad-ship-date", requested_ship_date="soon"),
        reason="requested_ship_date")
    # aiormq fills in a random message_id when a sender sets none, as many clients do: the
    # consumer sees one that is not the envelope's event_id.
    add("no-message-id", None, message_id=None, reason="differs from the envelope's event_id")
    # Answered for a business reason, and audited; well formed, so not dead-lettered.
    add("unknown-customer", None, data=order(f"{run}-unknown-customer", customer_id="C-NOBODY"),
        reason="C-NOBODY", dead_letter=None)
    add("unknown-product", None, data=order(f"{run}-unknown-product", lines=line_with(product_id="P-NONE")),
        reason="P-NONE", dead_letter=None)
    # Sent by someone who may not speak for the system the key names: never answered.
    add("producer-is-another-system", None, envelope={"producer": "crm"},
        reason="producer 'crm' may not publish", answered=False)
    add("key-names-no-valid-system", None, routing_key="ext.Not A System!.order.submitted",
        envelope={"type": "ext.Not A System!.order.submitted", "producer": "Not A System!"},
        reason="names no valid outside system", answered=False)
    # (A type no consumer binds goes to the alternate exchange's kept queue: not testable on
    # this stack, whose watch queue binds `#`; tests/integration/test_outbox_relay_inbox.py.)
    # Internal events, forged or broken, on the dispatch service's queue: nobody to answer.
    confirmed = sample_order(f"{run}-forged")
    forged_id = str(uuid.uuid4())
    add("forged-internal-event", encoded(envelope(
        {**confirmed, "order_id": str(uuid.uuid4()), "version": 2, "source": "mes"},
        event_id=forged_id, type="order.confirmed", producer="mes")),
        message_id=forged_id, routing_key="order.confirmed", dead_letter=CONFIRMED_DLQ,
        reason="provenance", answered=False)
    broken_id = str(uuid.uuid4())
    add("internal-event-missing-fields", encoded(envelope(
        {"order_id": str(uuid.uuid4())}, event_id=broken_id, type="order.confirmed",
        producer="order")), message_id=broken_id, routing_key="order.confirmed",
        dead_letter=CONFIRMED_DLQ, reason="contract violation", answered=False)
    return cases


def identity(case: Case) -> str:
    """The id a case's dead letter and answer carry: its message id, else its envelope's."""
    return case.message_id or str(json.loads(case.body)["event_id"])


async def publish(stack: Stack, case: Case) -> None:
    assert stack.connection is not None
    channel = await stack.connection.channel(publisher_confirms=True, on_return_raises=True)
    try:
        exchange = await channel.get_exchange(f"{stack.namespace}.events")
        await exchange.publish(
            aio_pika.Message(case.body, message_id=case.message_id,
                             content_type=case.content_type,
                             user_id=broker_user(stack.amqp_url),
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=case.routing_key,
        )
    finally:
        await channel.close()


async def dead_letters(stack: Stack, wanted: dict[str, set[str]],
                       timeout: float = 30.0) -> dict[str, str]:
    """message id → reason, for the wanted ids of each dead-letter queue.

    Other tests' dead letters are taken unacked on this channel and returned when it closes.
    """
    assert stack.connection is not None
    channel = await stack.connection.channel()
    reasons: dict[str, str] = {}
    try:
        for dlq_name, ids in wanted.items():
            queue = await channel.declare_queue(f"{stack.namespace}.{dlq_name}", passive=True)
            deadline = time.monotonic() + timeout
            while not ids <= set(reasons) and time.monotonic() < deadline:
                message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    await asyncio.sleep(0.1)
                    continue
                # A copy of a message that had no id gets one: know it by its envelope's then.
                key = message.message_id or ""
                if key not in ids:
                    key = _event_id(message.body)
                if key in ids:
                    # The unrouted queue holds events as published: no reason header there.
                    reasons[key] = str((message.headers or {}).get(ERROR_HEADER, ""))
                    await message.ack()
    finally:
        await channel.close()
    return reasons


async def test_bad_messages_mixed_with_good_are_each_dead_lettered_answered_or_handled_once(
    stack: Stack,
) -> None:
    run = uuid.uuid4().hex[:6]
    bad = bad_cases(run)
    assert len({case.kind for case in bad}) >= 25

    # The good ones: plain, a machine sender with no actor or a null one, an envelope with a
    # field a newer producer added, one sent twice, and one whose id a bad message reuses.
    good: list[tuple[str, dict[str, Any]]] = []
    for kind in ("plain", "actor-missing", "actor-null", "extra-field", "sent-twice", "reused"):
        ref = f"{run}-ok-{kind}"
        body = envelope(order(ref), event_id=str(uuid.uuid4()))
        if kind == "actor-missing":
            del body["actor"]
        elif kind == "actor-null":
            body["actor"] = None
        elif kind == "extra-field":
            body["priority_hint"] = "from a newer producer"
        good.append((ref, body))
    reused_id = good[-1][1]["event_id"]
    conflict = Case("same-id-different-body",
                    encoded(envelope(order(f"{run}-same-id-different-body"), event_id=reused_id)),
                    message_id=reused_id, reason="with a different body")

    # Interleaved; the reused id's first body goes first, so the conflict comes after it.
    await publish(stack, Case("reused", encoded(good[-1][1]), message_id=reused_id))
    for index, case in enumerate(bad):
        await publish(stack, case)
        if index < len(good) - 1:
            ref, body = good[index]
            for _ in range(2 if ref.endswith("sent-twice") else 1):
                await publish(stack, Case(ref, encoded(body), message_id=body["event_id"]))
    await publish(stack, conflict)
    bad.append(conflict)

    # Every bad one is in its dead-letter queue, with the reason.
    wanted: dict[str, set[str]] = {}
    for case in bad:
        if case.dead_letter is not None:
            wanted.setdefault(case.dead_letter, set()).add(identity(case))
    reasons = await dead_letters(stack, wanted)
    for case in bad:
        if case.dead_letter is not None:
            assert identity(case) in reasons, f"{case.kind}: not dead-lettered"
            assert case.reason in reasons[identity(case)], (case.kind, reasons[identity(case)])

    # Every one whose sender has a right to an answer got exactly one, naming its problem; the
    # answer is caused by the message's id, or names the order's reference where it was legible.
    def answers_to(case: Case, event: dict[str, Any]) -> bool:
        return event.get("type") == "order.rejected" and (
            event.get("causation_id") == identity(case)
            or event["data"].get("external_ref") == f"{run}-{case.kind}")

    answered = [c for c in bad if c.answered]
    await stack.events(lambda e: any(answers_to(c, e) for c in answered),
                       count=len(answered), timeout=30)
    for case in bad:
        answers = [e for e in stack.seen if answers_to(case, e)]
        if not case.answered:
            assert answers == [], f"{case.kind} must not be answered: {answers}"
            continue
        assert len(answers) == 1, f"{case.kind}: {len(answers)} answers"
        text = " | ".join(answers[0]["data"]["reasons"])
        assert case.reason in text, (case.kind, text)
        assert answers[0]["data"]["source"] == "mes"

    # Every good one has exactly one order and one dispatch.
    async with httpx.AsyncClient(timeout=10) as client:
        for ref, _ in good:
            orders = await _until_found(client, f"{stack.url('order')}/orders",
                                        {"external_ref": ref}, stack.headers("sales"))
            assert len(orders) == 1, (ref, orders)
            dispatches = await _until_found(client, f"{stack.url('dispatch')}/dispatches",
                                            {"order_id": orders[0]["id"]},
                                            stack.headers("planner"))
            assert len(dispatches) == 1, (ref, dispatches)
        # The bad ones made no order.
        for case in bad:
            if case.kind.startswith("unknown-") or case.dead_letter == SUBMISSIONS_DLQ:
                found = (await client.get(f"{stack.url('order')}/orders",
                                          params={"external_ref": f"{run}-{case.kind}"},
                                          headers=stack.headers("sales"))).json()
                assert found == [], case.kind

    # No consumer process restarted or logged a traceback on the way.
    for name, proc in stack.procs.items():
        assert proc.poll() is None, f"{name} is no longer running"
    assert "Traceback" not in stack.log_text()


def _event_id(body: bytes) -> str:
    try:
        return str(json.loads(body)["event_id"])
    except (ValueError, KeyError, TypeError, RecursionError):
        return ""


async def _until_found(client: httpx.AsyncClient, url: str, params: dict[str, str],
                       headers: dict[str, str], timeout: float = 20.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get(url, params=params, headers=headers)
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()
        if found or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.2)
