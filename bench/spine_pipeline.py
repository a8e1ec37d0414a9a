#!/usr/bin/env python3
"""spine_pipeline.py - one measurement of the real Spine pipeline, shaped like the reference.

The reference (`../shared/bench/limit/pipeline_limit.py`) pushes N orders through
order → dispatch → notification. This does the same through Spine itself:

  1. an isolated stack: fresh databases `spinebench_<hex>_<service>` (Alembic), the topology
     of namespace `spinebench_<hex>` declared, the four services started as real processes
     (`python -m services.<name>.main`, SPINE_LOG_LEVEL=WARNING) with every guarantee on
     (outbox + relay with confirms and `mandatory`, inbox, quorum queues, audit, tracing
     middleware), and the sample ERP export uploaded through the erp_adapter;
  2. a warm-up (default 100 orders, not measured), then a CHECKPOINT;
  3. N valid `ext.bench.order.submitted` envelopes (`confirmed: true`), published with
     aio-pika (persistent, publisher confirms, `mandatory`), at most --inflight (64) orders in
     flight end to end, or on an open-loop schedule of --rate R orders/s;
  4. completion of an order = the notification service has stored that order's
     `dispatch.created` (table `observed_event`, matched by the order journey's correlation id)
     and, in the same transaction, the planners' inbox entry the bench's rule (`bench/rules.json`)
     makes of it.

Latency = completion - start of the publish. The bench finds completed orders by polling the
notification database every --poll-ms (10) ms for the orders still in flight (an indexed
`correlation_id = ANY(...)` lookup); the completion time is when the poll that first sees the
row returns. That is an upper bound of the notification COMMIT, late by the poll interval
(poll/2 on average) plus the query. The row's `received_at` (`now()` of the notification
transaction, i.e. its start, before its statements and COMMIT) gives a lower bound; both are
reported (`p50_ms`… and `txn_start_p50_ms`…). A closed-loop slot is freed when the poll sees the
order, as the reference frees one when the notification COMMIT returns. With more than 64
orders in flight (an open-loop rate Spine cannot keep up with) the interval grows in proportion
(poll-ms x in-flight/64): the poll costs the same per second, and its delay stays small next to
a latency that grows with the backlog too.

It prints one JSON line on stdout; the first keys are those of the reference
(orders, seconds, orders_per_s, p50_ms, p95_ms, p99_ms, lost, duplicates), followed by the
configuration, the verification checks and the CPU split. Progress goes to stderr.
Exit status: 0 when the verification passes, 1 when it does not (lost, duplicated,
dead-lettered or unsent events, a service that did not stop cleanly), 2 when the run failed.
The stack's databases, queues and exchanges are removed at the end, also on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `shared` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aio_pika  # noqa: E402
import asyncpg  # noqa: E402
import uvloop  # noqa: E402

from bench.common import cpu_snapshot, cpu_split, monotonic, ms, pct, say  # noqa: E402
from bench.stack import ROOT, Stack  # noqa: E402
from shared.contracts.envelope import Actor, new_envelope  # noqa: E402
from shared.messaging.permissions import broker_user  # noqa: E402
from shared.registry import NAMES as SERVICES  # noqa: E402

SYSTEM = "bench"
ROUTING_KEY = f"ext.{SYSTEM}.order.submitted"
# `type || ''` keeps the planner off the `type` index: on the fresh, never-analyzed table it
# otherwise ANDs a bitmap of every dispatch.created row into each poll (measured: 2.1 ms
# instead of 0.5 ms per poll of 64 ids on 6,300 rows; 0.13 cores of Postgres at 60 polls/s).
_POLL_DONE = (
    "SELECT correlation_id, received_at FROM observed_event"
    " WHERE correlation_id = ANY($1::uuid[]) AND type || '' = 'dispatch.created'"
)


# ----------------------------------------------------------------------------- the orders
@dataclass(frozen=True)
class Catalog:
    customers: list[str]
    products: list[tuple[str, str]]  # (product_id, uom), active ones only


def load_catalog() -> Catalog:
    """Active customers and products of the sample ERP export the stack loads."""
    with open(ROOT / "samples/erp/customers.csv", newline="") as fh:
        customers = [r["customer_id"] for r in csv.DictReader(fh) if r["active"].lower() == "true"]
    products = [(p["product_id"], p["uom"])
                for p in json.loads((ROOT / "samples/erp/products.json").read_text())["products"]
                if p["active"]]
    return Catalog(customers, products)


@dataclass(frozen=True)
class Order:
    correlation_id: uuid.UUID
    event_id: str
    body: bytes
    traceparent: str

    def message(self, user_id: str) -> aio_pika.Message:
        return aio_pika.Message(
            self.body,
            # The sender the broker vouches for: consumers refuse a message without one.
            user_id=user_id,
            message_id=self.event_id,
            correlation_id=str(self.correlation_id),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers={"traceparent": self.traceparent},
        )


def build_orders(n: int, tag: str, catalog: Catalog, lines: int) -> list[Order]:
    """N valid, already-confirmed submissions, built before the clock starts."""
    ship_date = (date.today() + timedelta(days=7)).isoformat()
    actor = Actor(id=SYSTEM, role="integration")
    orders = []
    for i in range(n):
        cid = uuid.uuid4()
        order_lines = []
        for k in range(lines):
            product_id, uom = catalog.products[(i + k) % len(catalog.products)]
            order_lines.append({"line_no": k + 1, "product_id": product_id,
                                "quantity": "4" if uom == "EA" else "1.5", "uom": uom})
        data = {
            "external_ref": f"{tag}-{i:07d}",
            "customer_id": catalog.customers[i % len(catalog.customers)],
            "requested_ship_date": ship_date,
            "priority": "rush" if i % 10 == 0 else "normal",
            "ship_to": {"name": "Receiving dock 3", "street": "Werkstrasse 12", "city": "Linz",
                        "postal_code": "4020", "country": "AT"},
            "lines": order_lines,
            "confirmed": True,
        }
        envelope = new_envelope(type=ROUTING_KEY, producer=SYSTEM, data=data, actor=actor,
                                correlation_id=cid)
        orders.append(Order(cid, str(envelope["event_id"]),
                            json.dumps(envelope, separators=(",", ":")).encode(),
                            f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"))
    return orders


# ----------------------------------------------------------------------------- the load
@dataclass
class Outcome:
    started: dict[uuid.UUID, float] = field(default_factory=dict)  # publish start, epoch s
    done: dict[uuid.UUID, float] = field(default_factory=dict)  # first seen stored, epoch s
    txn_start: dict[uuid.UUID, float] = field(default_factory=dict)  # its received_at
    polls: int = 0
    start_lag: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stalled: bool = False

    def latencies(self) -> list[float]:
        return sorted(self.done[c] - self.started[c] for c in self.done)

    def txn_start_latencies(self) -> list[float]:
        return sorted(self.txn_start[c] - self.started[c] for c in self.txn_start)

    def seen_after_txn_start(self) -> list[float]:
        return sorted(self.done[c] - self.txn_start[c] for c in self.txn_start)


async def drive(orders: list[Order], exchange: aio_pika.abc.AbstractExchange,
                poll: asyncpg.prepared_stmt.PreparedStatement, *, inflight: int | None,
                rate: float, poll_s: float, stall_s: float, label: str, user_id: str) -> Outcome:
    """Publish `orders` (closed loop of `inflight`, or open loop at `rate`) until all completed."""
    out = Outcome()
    n = len(orders)
    sem = asyncio.Semaphore(inflight) if inflight else None
    pending: dict[uuid.UUID, float] = {}
    failed = 0
    finished = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()

    async def publish(order: Order) -> None:
        nonlocal failed
        t0 = time.time()
        # Registered before the publish: the poll may see the order before the confirm returns.
        out.started[order.correlation_id] = pending[order.correlation_id] = t0
        try:
            await exchange.publish(order.message(user_id), routing_key=ROUTING_KEY, mandatory=True)
        except Exception as exc:  # reported; the order counts as lost
            pending.pop(order.correlation_id, None)
            failed += 1
            if len(out.errors) < 5:
                out.errors.append(f"publish {order.correlation_id}: {exc!r}")
            if sem is not None:
                sem.release()

    async def watch() -> None:
        last_progress = last_print = monotonic()
        while len(out.done) + failed < n:
            await asyncio.sleep(poll_s * max(1.0, len(pending) / 64))
            if pending:
                out.polls += 1
                rows = await poll.fetch(list(pending))
                seen = time.time()
                for cid, received_at in rows:
                    if pending.pop(cid, None) is None:
                        continue
                    out.done[cid] = seen
                    out.txn_start[cid] = received_at.timestamp()
                    if sem is not None:
                        sem.release()
                if rows:
                    last_progress = monotonic()
            now = monotonic()
            if now - last_progress > stall_s:
                out.stalled = True
                say(f"  {label}: no order completed for {stall_s:.0f}s; giving up "
                    f"({len(out.done)}/{n} done)")
                break
            if now - last_print >= 5.0:
                last_print = now
                elapsed = time.time() - min(out.started.values(), default=time.time())
                say(f"  {label}: {len(out.done)}/{n} done, {len(out.done) / max(elapsed, 1e-9):.0f}"
                    f" orders/s so far, {len(pending)} in flight")
        finished.set()
        if sem is not None:  # unblock the generator if it still waits for a slot
            for _ in range(n):
                sem.release()

    watcher = asyncio.create_task(watch())
    t_go = monotonic()
    for i, order in enumerate(orders):
        if rate:
            delay = t_go + i / rate - monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        if sem is not None:
            await sem.acquire()
        if finished.is_set():
            break
        if rate:
            out.start_lag.append(monotonic() - (t_go + i / rate))
        task = asyncio.create_task(publish(order))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await watcher
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
    return out


# ----------------------------------------------------------------------------- settle & verify
async def _fetchval(dsn: str, sql: str, *args: Any) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def unsent_outbox(stack: Stack) -> dict[str, int]:
    return {name: int(await _fetchval(stack.dsn(name),
                                      "SELECT count(*) FROM outbox WHERE sent_at IS NULL"))
            for name in SERVICES}


async def queue_depths(stack: Stack) -> dict[str, int]:
    """Ready messages in every consumer queue and dead-letter queue of the stack."""
    conn = await aio_pika.connect(stack.amqp_url)
    depths = {}
    try:
        channel = await conn.channel()
        for name in stack.queues:
            queue = await channel.declare_queue(name, passive=True)
            depths[name] = int(queue.declaration_result.message_count or 0)
    finally:
        await conn.close()
    return depths


async def settle(stack: Stack, orders: int, limit_s: float) -> tuple[float, bool]:
    """Wait until the stack is idle: every dispatch.created stored, outboxes sent, queues empty.

    Idle twice in a row, 250 ms apart, so that a message in a handler (unacked, so in no
    queue's ready count, its outbox rows not yet committed) is not mistaken for quiet.
    """
    t0 = monotonic()
    quiet = 0
    while monotonic() - t0 < limit_s:
        stored = int(await _fetchval(stack.dsn("notification"),
                                     "SELECT count(*) FROM observed_event WHERE type = 'dispatch.created'"))
        idle = (stored >= orders and not any((await unsent_outbox(stack)).values())
                and not any((await queue_depths(stack)).values()))
        quiet = quiet + 1 if idle else 0
        if quiet >= 2:
            return monotonic() - t0, True
        await asyncio.sleep(0.25)
    return monotonic() - t0, False


async def verify(stack: Stack, measured: list[uuid.UUID], warmup: list[uuid.UUID]) -> dict[str, Any]:
    """Count, per submitted order, its orders, dispatches and observed events; and what is left."""
    checks: dict[str, Any] = {}
    for label, ids in (("", measured), ("warmup_", warmup)):
        if not ids:
            continue
        conn = await asyncpg.connect(stack.dsn("dispatch"))
        try:
            row = await conn.fetchrow("SELECT count(*) AS n, count(DISTINCT correlation_id) AS d"
                                      " FROM dispatch WHERE correlation_id = ANY($1::uuid[])", ids)
        finally:
            await conn.close()
        checks[f"{label}dispatches"] = row["n"]
        checks[f"{label}orders_with_dispatch"] = row["d"]
        conn = await asyncpg.connect(stack.dsn("notification"))
        try:
            rows = await conn.fetch("SELECT type, count(*) AS n, count(DISTINCT correlation_id) AS d"
                                    " FROM observed_event WHERE correlation_id = ANY($1::uuid[])"
                                    " GROUP BY type ORDER BY type", ids)
        finally:
            await conn.close()
        checks[f"{label}observed"] = {r["type"]: {"events": r["n"], "orders": r["d"]} for r in rows}
        conn = await asyncpg.connect(stack.dsn("order"))
        try:
            row = await conn.fetchrow("SELECT count(*) AS n, count(DISTINCT correlation_id) AS d"
                                      " FROM customer_order WHERE correlation_id = ANY($1::uuid[])",
                                      ids)
        finally:
            await conn.close()
        checks[f"{label}orders_stored"] = row["n"]
        checks[f"{label}orders_stored_distinct"] = row["d"]
    checks["outbox_unsent"] = await unsent_outbox(stack)
    depths = await queue_depths(stack)
    # The unrouted queue keeps, by design, the events nobody binds (order.received and
    # order.rejected when no outside system listens): counted, not residue.
    unrouted = f"{stack.namespace}.unrouted"
    checks["unrouted"] = depths.pop(unrouted, 0)
    checks["queues_left"] = sum(v for k, v in depths.items() if not k.endswith(".dlq"))
    checks["dead_letters"] = sum(v for k, v in depths.items() if k.endswith(".dlq"))
    checks["queues_nonempty"] = {k: v for k, v in depths.items() if v}
    return checks


PG_COUNTERS = ("sessions", "xact_commit", "xact_rollback", "tup_inserted", "tup_updated",
               "tup_deleted", "tup_returned", "tup_fetched", "blks_hit", "blks_read")


async def pg_stats(stack: Stack) -> dict[str, dict[str, int]]:
    """pg_stat_database counters of each service database (connections, commits, rows)."""
    conn = await asyncpg.connect(f"{stack.pg_url}/postgres")
    try:
        rows = await conn.fetch(f"SELECT datname, {', '.join(PG_COUNTERS)} FROM pg_stat_database"  # nosec B608 # constant column names
                                " WHERE datname = ANY($1)", [stack.database(name) for name in SERVICES])
    finally:
        await conn.close()
    by_db = {r["datname"]: r for r in rows}
    return {name: {k: int(by_db[stack.database(name)][k] or 0) if stack.database(name) in by_db else 0
                   for k in PG_COUNTERS} for name in SERVICES}


def per_order(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]],
              orders: int) -> dict[str, dict[str, float]]:
    """Counter deltas per completed order, per service database."""
    return {name: {k: round((after[name][k] - before[name][k]) / max(orders, 1), 2) for k in PG_COUNTERS}
            for name in after}


# ----------------------------------------------------------------------------- profiling
def start_py_spy(binary: str, stack: Stack, out_dir: Path, rate: int) -> list[subprocess.Popen[bytes]]:
    """py-spy record on each consuming service, in collapsed-stack form (one file per service)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    spies = []
    for name in ("order", "dispatch", "notification"):
        spies.append(subprocess.Popen(  # nosec B603 # py-spy with our own arguments, no shell
            [binary, "record", "--pid", str(stack.procs[name].pid), "--rate", str(rate),
             "--nonblocking", "--threads", "--format", "raw", "--output", str(out_dir / f"{name}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return spies


def stop_py_spy(spies: list[subprocess.Popen[bytes]]) -> None:
    for spy in spies:
        if spy.poll() is None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    for spy in spies:
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()


# ----------------------------------------------------------------------------- one run
async def run(args: argparse.Namespace) -> tuple[dict[str, Any] | None, int]:
    task = asyncio.current_task()
    assert task is not None  # nosec B101 # narrows a type: run() is always awaited in a task
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    log_dir = Path(args.log_dir)
    stack = Stack.new(pg_url=args.pg_url, amqp_url=args.amqp_url, prefetch=args.prefetch,
                      log_dir=log_dir)
    label = "spine"
    result: dict[str, Any] | None = None
    amqp: aio_pika.abc.AbstractConnection | None = None
    poll_conn: asyncpg.Connection | None = None
    spies: list[subprocess.Popen[bytes]] = []
    inflight = args.inflight if args.inflight is not None else (None if args.rate else 64)
    try:
        say(f"  {label}: starting isolated stack {stack.namespace} "
            f"(4 databases, topology, 4 services, ERP reference data)")
        t_start = monotonic()
        await stack.start(ready_timeout_s=args.ready_timeout)
        start_s = monotonic() - t_start
        # What the stack costs doing nothing (relays' safety polls, heartbeats, …), over 2 s.
        i0 = cpu_snapshot()
        await asyncio.sleep(2.0)
        idle = cpu_split(i0, cpu_snapshot(), labels=stack.pids())
        idle_cores = {k: v for k, v in idle["bench_cores"].items() if k in SERVICES}
        say(f"  {label}: stack up in {start_s:.1f}s; idle CPU of the services: "
            + ", ".join(f"{k} {v:.2f}" for k, v in idle_cores.items()) + " cores")

        amqp = await aio_pika.connect(args.amqp_url)
        channel = await amqp.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.get_exchange(stack.exchange, ensure=False)
        poll_conn = await asyncpg.connect(stack.dsn("notification"))
        poll = await poll_conn.prepare(_POLL_DONE)
        catalog = load_catalog()
        run_tag = stack.namespace.rsplit("_", 1)[-1]
        warm = build_orders(args.warmup, f"W{run_tag}", catalog, args.lines)
        measured = build_orders(args.orders, f"M{run_tag}", catalog, args.lines)
        poll_s = args.poll_ms / 1000.0

        if warm:
            say(f"  {label}: warm-up, {len(warm)} orders (not measured)")
            w = await drive(warm, exchange, poll, inflight=64, rate=0, poll_s=poll_s,
                            stall_s=args.stall_timeout, label=f"{label} warm-up",
                            user_id=broker_user(args.amqp_url))
            if len(w.done) < len(warm):
                raise RuntimeError(f"warm-up: only {len(w.done)}/{len(warm)} orders completed; "
                                   f"first errors {w.errors}; logs:\n"
                                   + "\n".join(stack.log_tail(s, 5) for s in SERVICES))
            await settle(stack, len(warm), args.settle_timeout)
        await poll_conn.execute("CHECKPOINT")

        mode = f"rate {args.rate:g}/s" if args.rate else f"max (inflight {inflight})"
        say(f"  {label}: measuring {len(measured)} orders, {mode}")
        if args.py_spy:
            spies = start_py_spy(args.py_spy, stack, Path(args.profile_dir), args.py_spy_rate)
            await asyncio.sleep(1.0)  # let py-spy attach before the clock starts
        stats0 = await pg_stats(stack)
        c0 = cpu_snapshot()
        out = await drive(measured, exchange, poll, inflight=inflight, rate=args.rate, poll_s=poll_s,
                          stall_s=args.stall_timeout, label=label,
                          user_id=broker_user(args.amqp_url))
        c1 = cpu_snapshot()
        # Backends publish their counters within about a second (pending stats are flushed then).
        await asyncio.sleep(1.1)
        stats1 = await pg_stats(stack)
        if spies:
            stop_py_spy(spies)
            say(f"  {label}: py-spy profiles in {args.profile_dir}")

        settle_s, settled = await settle(stack, len(warm) + len(measured), args.settle_timeout)
        checks = await verify(stack, [o.correlation_id for o in measured],
                              [o.correlation_id for o in warm])
        stop_problems = await stack.stop()
        logged = {name: stack.log_lines(name) for name in SERVICES}

        cpu = cpu_split(c0, c1, labels={**stack.pids(), os.getpid(): "driver"}, orders=len(out.done) or None,
                        pg_labels={poll_conn.get_server_pid(): "bench poller"})
        names = {f"db:{stack.database(svc)}": f"db:{svc}" for svc in SERVICES}
        cpu["postgres_cores"] = {names.get(k, k): v for k, v in cpu["postgres_cores"].items()}
        lat = out.latencies()
        lat_txn = out.txn_start_latencies()
        in_txn = out.seen_after_txn_start()
        n = len(measured)
        first = min(out.started.values(), default=0.0)
        secs = (max(out.done.values()) - first) if out.done else 0.0
        lost = n - checks["orders_with_dispatch"]
        duplicates = checks["dispatches"] - checks["orders_with_dispatch"]
        notified = checks["observed"].get("dispatch.created", {"events": 0, "orders": 0})
        warm_lost = len(warm) - checks.get("warmup_orders_with_dispatch", 0)
        warm_dups = checks.get("warmup_dispatches", 0) - checks.get("warmup_orders_with_dispatch", 0)
        problems = []
        if lost or warm_lost:
            problems.append(f"lost: {lost} measured + {warm_lost} warm-up orders have no dispatch")
        if duplicates or warm_dups:
            problems.append(f"duplicates: {duplicates} + {warm_dups} extra dispatches")
        if notified["orders"] != n or notified["events"] != n:
            problems.append(f"notification stored dispatch.created {notified['events']} times for "
                            f"{notified['orders']} of {n} orders")
        if checks["orders_stored"] != checks["orders_stored_distinct"]:
            problems.append(f"{checks['orders_stored'] - checks['orders_stored_distinct']} extra orders")
        if any(checks["outbox_unsent"].values()):
            problems.append(f"unsent outbox rows: {checks['outbox_unsent']}")
        if checks["queues_left"] or checks["dead_letters"]:
            problems.append(f"messages left: {checks['queues_nonempty']}")
        if out.errors:
            problems.append(f"publish errors: {out.errors}")
        problems += stop_problems
        result = {
            "system": "spine",
            "orders": n,
            "seconds": round(secs, 3),
            "orders_per_s": round(len(out.done) / secs, 1) if secs > 0 else 0.0,
            "p50_ms": ms(pct(lat, 50)),
            "p95_ms": ms(pct(lat, 95)),
            "p99_ms": ms(pct(lat, 99)),
            "lost": lost,
            "duplicates": duplicates,
            "max_ms": ms(lat[-1] if lat else None),
            # Lower bound: to the start of the notification transaction that stored the event.
            "txn_start_p50_ms": ms(pct(lat_txn, 50)),
            "txn_start_p95_ms": ms(pct(lat_txn, 95)),
            "txn_start_p99_ms": ms(pct(lat_txn, 99)),
            "config": {
                "load": f"rate {args.rate:g}/s" if args.rate else "max",
                "inflight": inflight, "prefetch": args.prefetch, "warmup": len(warm),
                "lines_per_order": args.lines, "poll_ms": args.poll_ms,
                "namespace": stack.namespace, "log_level": "WARNING",
                "completion": "first poll that sees the order's dispatch.created in notification's "
                              "observed_event (lower bound: the row's received_at)",
                "otel_export": bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                                    or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")),
            },
            "driver": {
                "completed": len(out.done), "publish_errors": len(out.errors),
                "polls_per_order": round(out.polls / max(len(out.done), 1), 2),
                "first_errors": out.errors, "stalled": out.stalled,
                # notification txn start → seen by the poll: the store itself plus the poll delay
                "seen_after_txn_start_p50_ms": ms(pct(in_txn, 50)),
                "seen_after_txn_start_p95_ms": ms(pct(in_txn, 95)),
                "start_lag_p99_ms": ms(pct(sorted(out.start_lag), 99)),
                "start_lag_max_ms": ms(max(out.start_lag) if out.start_lag else None),
            },
            # pg_stat_database deltas while measuring (+1 s) per completed order: new connections
            # (pool churn), commits, rollbacks, rows.
            # (The bench's own polls are read-only transactions on the notification database:
            # `driver.polls_per_order` of its commits and some of its tuples read are the bench's.)
            "pg_per_order": per_order(stats0, stats1, len(out.done)),
            "checks": {**checks, "settled": settled, "settle_s": round(settle_s, 2),
                       "warmup_lost": warm_lost, "warmup_duplicates": warm_dups},
            "stack": {"start_s": round(start_s, 1), "idle_cores": idle_cores,
                      "exit_codes": stack.exit_codes,
                      "stop_problems": stop_problems,
                      "log_lines": {k: len(v) for k, v in logged.items()},
                      "log_sample": [f"{k}: {line}" for k, v in logged.items() for line in v[:3]]},
            "cpu": cpu,
            "problems": problems,
        }
        return result, (1 if problems else 0)
    finally:
        # Ctrl-C once more would abort the clean-up and leave databases behind: ignore it now.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop_py_spy(spies)
        for closer in (amqp, poll_conn):
            if closer is not None:
                try:
                    await closer.close()
                except Exception as exc:  # the stack goes away regardless
                    say(f"  {label}: closing a connection: {exc!r}")
        if result is None:
            say(f"  {label}: cleaning up {stack.namespace} …")
        failures = await stack.cleanup()
        for failure in failures:
            say(f"  {label}: cleanup: {failure}")
        if result is not None:
            result["cleanup_failures"] = failures


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", "-n", type=int, default=2000, help="orders measured (default 2000)")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="offered load in orders/s, open loop (default 0 = as fast as possible)")
    ap.add_argument("--inflight", type=int, default=None,
                    help="max orders in flight end to end (default 64 at max load, unbounded with --rate)")
    ap.add_argument("--prefetch", type=int, default=64, help="SPINE_PREFETCH of every service (default 64)")
    ap.add_argument("--warmup", type=int, default=100,
                    help="orders pushed through before the measurement, not measured (default 100)")
    ap.add_argument("--lines", type=int, default=1, help="order lines per order (default 1)")
    ap.add_argument("--poll-ms", type=float, default=10.0,
                    help="how often the notification database is polled for completed orders (default 10)")
    ap.add_argument("--stall-timeout", type=float, default=60.0,
                    help="give up when no order completes for this many seconds (default 60)")
    ap.add_argument("--settle-timeout", type=float, default=60.0,
                    help="after the run, wait at most this long for queues and outboxes to drain")
    ap.add_argument("--ready-timeout", type=float, default=90.0, help="stack start-up limit in seconds")
    ap.add_argument("--amqp-url", default=os.environ.get("SPINE_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"))
    ap.add_argument("--pg-url", default=os.environ.get("SPINE_PG_URL", "postgresql://postgres@127.0.0.1:5432"),
                    help="PostgreSQL server URL without a database (the bench user must be superuser "
                         "for CHECKPOINT and DROP DATABASE ... WITH (FORCE))")
    ap.add_argument("--log-dir", default=str(ROOT / "bench" / "results" / "logs"),
                    help="where the services' logs go (default bench/results/logs)")
    ap.add_argument("--py-spy", metavar="BIN", default=None,
                    help="profile order, dispatch and notification with this py-spy binary during the "
                         "measured window (collapsed stacks, see bench/profile_summary.py)")
    ap.add_argument("--py-spy-rate", type=int, default=100, help="py-spy samples per second (default 100)")
    ap.add_argument("--profile-dir", default=str(ROOT / "bench" / "results" / "profile"),
                    help="where --py-spy writes <service>.txt")
    args = ap.parse_args(argv)
    if args.orders < 1 or args.lines < 1 or args.warmup < 0:
        ap.error("--orders and --lines must be at least 1, --warmup at least 0")
    return args


def main() -> None:
    args = parse()
    try:
        result, code = uvloop.run(run(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        say("  spine: interrupted; the stack was removed")
        sys.exit(130)
    except Exception as exc:
        error = f"{exc.__class__.__name__}: {exc}"
        print(json.dumps({"system": "spine", "orders": args.orders, "error": error}), flush=True)
        sys.exit(2)
    print(json.dumps(result), flush=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
