"""The checker: the history against what the four databases and the broker hold afterwards.

What counts as a violation (each is listed, with examples, and fails the run):

- lost: an `ok` submission without its order, or whose order is not confirmed (both channels
  ask for a confirmed order); a confirmed order without a dispatch; an event an outbox marked
  sent (or a submission the broker confirmed) that some consumer bound to it never recorded in
  its inbox; any message in a dead-letter queue (dead-lettered is lost, whatever the reason).
- duplicated: two orders for one (source, external_ref); two dispatches for one order; an
  audit transition recorded twice (same entity, action, from, to and version).
- phantom: an order nobody submitted (no operation has its reference); an order from a
  `failed` operation; a dispatch for an order that does not exist or is not confirmed.
- audit path: a dispatch's audit trail, oldest first, must start with `dispatch.created` into
  `pending`, move only along the workflow table (services.dispatch.domain.WORKFLOW) from the
  state it was in, and end in the dispatch's status; an order's with `order.received`, then
  `order.confirmed` once when it is confirmed.
- residue: unsent outbox rows in any database; messages left in any consumer queue.
- (added by the run) a consumed queue without a consumer at the end, by the broker's count; a
  service that exited by itself during the run rather than wait for a dependency.

An `indeterminate` operation may have taken effect or not; whichever, it must have done so
wholly (one order, confirmed, one dispatch) or not at all — or, over HTTP, an order received
but not confirmed, since the confirm may be what never got through.
"""

from __future__ import annotations

import contextlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import asyncpg

from services.dispatch.domain import WORKFLOW, Status
from shared.messaging.topology import CONSUMER_QUEUES, ERROR_HEADER, Topology, topic_matches
from shared.stack import IsolatedStack
from tests.chaos.driver import History

EXAMPLES = 5
# The order's moves; other order rows (e.g. `order.submission_duplicate`) record no move.
ORDER_MOVES = frozenset({"order.received", "order.confirmed", "order.cancelled"})


@dataclass
class Report:
    """Violations by kind, and the figures of what was checked."""

    violations: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    figures: dict[str, Any] = field(default_factory=dict)

    def add(self, kind: str, what: str) -> None:
        self.violations[kind].append(what)

    @property
    def ok(self) -> bool:
        return not any(self.violations.values())

    def summary(self) -> str:
        lines = [f"  {k}: {v}" for k, v in self.figures.items()]
        if self.ok:
            lines.append("  violations: none")
        for kind, found in sorted(self.violations.items()):
            if found:
                lines.append(f"  {kind}: {len(found)}, e.g. " + "; ".join(found[:EXAMPLES]))
        return "\n".join(lines)


async def _fetch(dsn: str, query: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return list(await conn.fetch(query))
    finally:
        await conn.close()


async def queue_depths(amqp_url: str, namespace: str) -> dict[str, tuple[int, int]]:
    """Queue name → (messages ready, consumers), for every queue of the namespace's topology."""
    depths = {}
    connection = await aio_pika.connect(amqp_url, timeout=10)
    try:
        for service, queues in CONSUMER_QUEUES.items():
            for purpose, _ in queues:
                name = Topology(namespace).queue_name(service, purpose)
                for queue_name in (name, f"{name}.dlq"):
                    channel = await connection.channel()
                    queue = await channel.declare_queue(queue_name, passive=True)
                    result = queue.declaration_result
                    depths[queue_name] = (result.message_count or 0, result.consumer_count or 0)
                    await channel.close()
    finally:
        await connection.close()
    return depths


async def dead_letter_reasons(amqp_url: str, queue_name: str, limit: int = EXAMPLES) -> list[str]:
    """A few dead letters' reasons, read and put back (nothing is taken off the queue)."""
    reasons = []
    connection = await aio_pika.connect(amqp_url, timeout=10)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, passive=True)
        held = []
        for _ in range(limit):
            message = await queue.get(no_ack=False, fail=False, timeout=5)
            if message is None:
                break
            held.append(message)
            headers = message.headers or {}
            reason = headers.get(ERROR_HEADER) or headers.get("x-death") or "no reason header"
            reasons.append(f"{message.message_id}: {str(reason)[:200]}")
        for message in held:
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
        await channel.close()
    finally:
        await connection.close()
    return reasons


async def check(history: History, stack: IsolatedStack) -> Report:
    """Everything the module docstring lists, over one finished (drained) run."""
    report = Report()
    order_dsn, dispatch_dsn = stack.dsn("order"), stack.dsn("dispatch")
    orders = await _fetch(order_dsn, "SELECT id::text, source, external_ref, status, version "
                                     "FROM customer_order")
    dispatches = await _fetch(dispatch_dsn, "SELECT id::text, order_id, status, version FROM dispatch")
    _check_orders(history, orders, report)
    _check_dispatches(orders, dispatches, report)
    _check_walks(history, dispatches, report)
    await _check_audit(order_dsn, dispatch_dsn, orders, dispatches, report)
    await _check_deliveries(history, stack, report)
    await _check_queues(stack, report)
    ops = history.operations
    report.figures.update({
        "seed": history.seed,
        "operations": history.counts(),
        "orders": len(orders), "dispatches": len(dispatches),
        "resent under a new message id": sum(op.resent for op in ops),
        "dispatches walked to picking": sum(op.walk == "ok" for op in ops),
        "walks left indeterminate": sum(op.walk == "indeterminate" for op in ops),
        "retries (submissions and walks)": {channel: sum(op.retries for op in ops if op.channel == channel)
                    for channel in ("amqp", "http")},
    })
    return report


def _check_orders(history: History, orders: list[asyncpg.Record], report: Report) -> None:
    by_key: dict[tuple[str | None, str], list[asyncpg.Record]] = defaultdict(list)
    for row in orders:
        by_key[(row["source"], row["external_ref"])].append(row)
    planned = {(op.source, op.external_ref): op for op in history.operations}
    for key, rows in by_key.items():
        if len(rows) > 1:
            report.add("duplicated orders", f"{key}: {len(rows)} orders")
        if key not in planned:
            report.add("phantom orders", f"{rows[0]['id']} {key} was never submitted")
    for key, op in planned.items():
        rows = by_key.get(key, [])
        if op.outcome == "failed":
            report.add("refused submissions", f"{op.external_ref} ({op.channel}): {op.detail}")
            if rows:
                report.add("phantom orders", f"{op.external_ref}: exists though it was refused")
            continue
        if op.outcome == "ok" and not rows:
            report.add("lost orders", f"{op.external_ref} ({op.channel}) was accepted, no order")
        for row in rows:
            unconfirmed_allowed = op.outcome == "indeterminate" and op.channel == "http"
            if row["status"] != "confirmed" and not unconfirmed_allowed:
                report.add("lost orders", f"{op.external_ref} ({op.channel}, {op.outcome}) "
                                          f"left {row['status']}")


def _check_dispatches(orders: list[asyncpg.Record], dispatches: list[asyncpg.Record],
                      report: Report) -> None:
    status_of = {row["id"]: row["status"] for row in orders}
    per_order = Counter(row["order_id"] for row in dispatches)
    for order_id, count in per_order.items():
        if count > 1:
            report.add("duplicated dispatches", f"order {order_id}: {count} dispatches")
        if order_id not in status_of:
            report.add("phantom dispatches", f"dispatch for unknown order {order_id}")
        elif status_of[order_id] != "confirmed":
            report.add("phantom dispatches", f"dispatch for order {order_id} in "
                                             f"{status_of[order_id]}")
    for order_id, status in status_of.items():
        if status == "confirmed" and per_order[order_id] == 0:
            report.add("lost dispatches", f"confirmed order {order_id} has no dispatch")


def _check_walks(history: History, dispatches: list[asyncpg.Record], report: Report) -> None:
    """A dispatch walked to `picking` is there; one whose walk went unanswered is on the way."""
    status_of = {row["id"]: row["status"] for row in dispatches}
    for op in history.operations:
        if op.walk is None or op.dispatch_id is None:
            continue
        status = status_of.get(op.dispatch_id)
        if op.walk == "failed":
            report.add("refused transitions", f"{op.dispatch_id}: {op.detail}")
        elif op.walk == "ok" and status != "picking":
            report.add("lost transitions", f"{op.dispatch_id} was moved to picking, is {status}")
        elif status not in ("pending", "released", "picking"):
            report.add("lost transitions", f"{op.dispatch_id} on its way to picking is {status}")


async def _check_audit(order_dsn: str, dispatch_dsn: str, orders: list[asyncpg.Record],
                       dispatches: list[asyncpg.Record], report: Report) -> None:
    query = ("SELECT entity_id, action, from_state, to_state, details->>'version' AS version "
             "FROM audit_log WHERE entity_type = '{}' ORDER BY id")
    for dsn, entity in ((order_dsn, "order"), (dispatch_dsn, "dispatch")):
        rows = await _fetch(dsn, query.format(entity))
        trails: dict[str, list[asyncpg.Record]] = defaultdict(list)
        for row in rows:
            trails[row["entity_id"]].append(row)
        seen = Counter((r["entity_id"], r["action"], r["from_state"], r["to_state"], r["version"])
                       for r in rows)
        for key, count in seen.items():
            if count > 1:
                report.add("duplicated audit rows", f"{entity} {key[0]} {key[1]} x{count}")
        if entity == "order":
            for row in orders:
                actions = [r["action"] for r in trails.get(row["id"], [])
                           if r["action"] in ORDER_MOVES]
                expected = ["order.received"] + (["order.confirmed"]
                                                  if row["status"] == "confirmed" else [])
                if actions != expected:
                    report.add("audit path violations",
                               f"order {row['id']} ({row['status']}): {actions}")
        else:
            for row in dispatches:
                problem = _dispatch_path_problem(trails.get(row["id"], []), row["status"])
                if problem:
                    report.add("audit path violations", f"dispatch {row['id']}: {problem}")


def _dispatch_path_problem(trail: list[asyncpg.Record], status: str) -> str | None:
    if not trail or trail[0]["action"] != "dispatch.created" or trail[0]["to_state"] != "pending":
        return f"does not start with dispatch.created → pending: {[r['action'] for r in trail]}"
    state = Status.PENDING
    for row in trail[1:]:
        if row["from_state"] == row["to_state"]:
            continue  # a refusal recorded (e.g. dispatch.cancel_refused): no move
        if row["from_state"] != state:
            return f"{row['action']} from {row['from_state']} while in {state}"
        target = Status(row["to_state"])
        if WORKFLOW.rule(state, target) is None:
            return f"{state} → {target} is not in the workflow table"
        state = target
    if state != status:
        return f"audit trail ends in {state}, the dispatch is {status}"
    return None


async def _check_deliveries(history: History, stack: IsolatedStack, report: Report) -> None:
    """Every event sent (outboxes, confirmed submissions) is in the inbox of each consumer bound."""
    sent: list[tuple[str, str, str]] = []  # (producer, routing key, event id)
    unsent = 0
    for service in stack.services:
        rows = await _fetch(stack.dsn(service.name),
                            "SELECT event_id::text, routing_key, sent_at IS NOT NULL AS sent "
                            "FROM outbox")
        unsent += sum(not r["sent"] for r in rows)
        for r in rows:
            if not r["sent"]:
                report.add("unsent outbox rows", f"{service.name} {r['routing_key']} {r['event_id']}")
            sent.append((service.name, r["routing_key"], r["event_id"]))
    for op in history.operations:
        if op.channel == "amqp" and op.outcome == "ok":
            sent += [("chaos", "ext.chaos.order.submitted", mid) for mid in op.message_ids]
    inboxes: set[tuple[str, str]] = set()
    for service in stack.services:
        rows = await _fetch(stack.dsn(service.name), "SELECT consumer, message_id FROM inbox")
        inboxes |= {(r["consumer"], r["message_id"]) for r in rows}
    topology = Topology(stack.namespace)
    checked = 0
    for producer, routing_key, event_id in sent:
        for consumer, queues in CONSUMER_QUEUES.items():
            for purpose, binding in queues:
                if not topic_matches(binding, routing_key):
                    continue
                checked += 1
                queue = topology.queue_name(consumer, purpose)
                if (queue, event_id) not in inboxes:
                    report.add("lost events", f"{routing_key} {event_id} from {producer} never "
                                              f"handled by {queue}")
    report.figures["events checked against inboxes"] = checked
    report.figures["unsent outbox rows"] = unsent


async def _check_queues(stack: IsolatedStack, report: Report) -> None:
    depths = await queue_depths(stack.amqp_url, stack.namespace)
    for name, (messages, consumers) in sorted(depths.items()):
        if not messages:
            continue
        if name.endswith(".dlq"):
            reasons = await dead_letter_reasons(stack.amqp_url, name)
            report.add("dead-lettered (lost)", f"{name}: {messages} ({' | '.join(reasons)})")
        else:
            report.add("queue residue", f"{name}: {messages} messages, {consumers} consumers")
    report.figures["queues"] = {n: m for n, (m, _) in depths.items() if m}

