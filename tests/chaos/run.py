"""A chaos run: private servers, the four services, load, faults, drain, then the checker.

    python -m tests.chaos.run --orders 10000 --rate 25 --kills 20 --rabbit-graceful 1 \\
        --rabbit-kills 1 --pg-restarts 1            # what `make soak` runs
    python -m tests.chaos.run --seed 1234 ...       # replays the schedule and the orders

The run prints its seed first, a progress line now and then, and a summary at the end; it
exits 1 when the checker finds any violation (or the system does not drain), 0 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx

from shared.messaging.topology import known_queues
from shared.stack import IsolatedStack, StackError
from tests.chaos.checker import Report, check, queue_depths
from tests.chaos.driver import History, LoadDriver
from tests.chaos.schedule import FaultPlan, Supervisor
from tests.chaos.servers import PrivatePostgres, PrivateRabbit, RestartableStack

DRAIN_TIMEOUT_S = 240.0
CONSUMER_RECOVERY_S = 30.0


@dataclass(frozen=True)
class RunConfig:
    orders: int = 1000
    rate: float = 12.0
    seed: int = 0
    kills_per_service: int = 3
    rabbit_graceful: int = 0
    rabbit_kills: int = 0
    pg_restarts: int = 0
    server_down_s: tuple[float, float] = (1.0, 3.0)
    http_share: float = 0.3
    keep: bool = False  # keep the servers' and services' directories for a look afterwards


@dataclass
class RunResult:
    config: RunConfig
    history: History
    report: Report
    drained: bool
    log_dir: Path
    logs: str

    @property
    def ok(self) -> bool:
        return self.drained and self.report.ok

    def summary(self) -> str:
        drain = "drained" if self.drained else f"NOT drained within {DRAIN_TIMEOUT_S:.0f} s"
        verdict = "PASS" if self.ok else f"FAIL (history and logs in {self.log_dir})"
        return f"chaos run {verdict}, seed {self.config.seed}, {drain}\n{self.report.summary()}"


def say(text: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {text}", flush=True)


async def chaos_run(config: RunConfig, progress: Callable[[str], None] = say) -> RunResult:
    """One whole run; the servers and services are gone when it returns."""
    progress(f"seed {config.seed} (replay with --seed {config.seed}); {config.orders} orders "
             f"at {config.rate}/s")
    work = Path(tempfile.mkdtemp(prefix="spine-chaos-"))
    rabbit, postgres = PrivateRabbit(), PrivatePostgres()
    stack: IsolatedStack | None = None
    result: RunResult | None = None
    try:
        await asyncio.gather(asyncio.to_thread(rabbit.start), asyncio.to_thread(postgres.start))
        progress(f"private servers up: RabbitMQ {rabbit.node} on {rabbit.port}, "
                 f"PostgreSQL on {postgres.port}")
        stack = RestartableStack(
            namespace=f"chaos{secrets.token_hex(3)}", pg_url=postgres.pg_url,
            amqp_url=rabbit.amqp_url, log_dir=work, log_level="WARNING",
            secret=os.environ.get("SPINE_JWT_SECRET") or secrets.token_hex(32),
        )
        await stack.start(ready_timeout_s=120.0)
        await stack.upload_erp_samples()
        await _replicas_fed(stack)
        progress("stack ready, reference data replicated")

        duration = config.orders / config.rate
        faults = FaultPlan(duration_s=duration, kills_per_service=config.kills_per_service,
                           rabbit_graceful=config.rabbit_graceful, rabbit_kills=config.rabbit_kills,
                           pg_restarts=config.pg_restarts,
                           server_down_s=config.server_down_s).draw(config.seed)
        progress(f"{len(faults)} faults over {duration:.0f} s")
        supervisor = Supervisor(stack, rabbit, postgres, say=progress)
        driver = LoadDriver(amqp_url=rabbit.amqp_url, namespace=stack.namespace,
                            order_url=stack.url("order"), dispatch_url=stack.url("dispatch"),
                            secret=stack.secret,
                            orders=config.orders, rate=config.rate, seed=config.seed,
                            http_share=config.http_share)
        watcher = asyncio.create_task(supervisor.watch())
        try:
            history, _ = await asyncio.gather(driver.run(progress), supervisor.run(faults))
            progress(f"load and faults over: {history.counts()}; faults done "
                     f"{dict(supervisor.done)}")
            drained = await _drain(stack, progress)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        report = await check(history, stack)
        # Consumers really came back: the broker's own count, not what a service logged. An idle
        # queue's consumer may still be in aio-pika's recovery loop (it retries every few
        # seconds), so each gets CONSUMER_RECOVERY_S to appear; one still missing then is lost.
        consumers, waited = await _consumers_back(rabbit, known_queues(stack.namespace))
        report.figures["consumer recovery wait (s)"] = round(waited, 1)
        for queue in known_queues(stack.namespace):  # the consumed ones, not the DLQs
            if not consumers.get(queue):
                report.add("queues without consumers", f"{queue}: {consumers.get(queue, 'absent')}")
        report.figures["faults"] = dict(sorted(supervisor.done.items()))
        # A service must wait out a dependency's outage, not exit (the supervisor restarted it).
        for name, exits in sorted(supervisor.unexpected_exits.items()):
            report.add("services that exited by themselves", f"{name}: {exits} time(s)")
        history.dump(work / "history.jsonl")
        result = RunResult(config, history, report, drained, work, stack.log_text())
        return result
    finally:
        if stack is not None:
            await stack.stop(grace_s=20.0)
        await asyncio.to_thread(rabbit.destroy)
        await asyncio.to_thread(postgres.destroy)
        if result is not None and result.ok and not config.keep:
            shutil.rmtree(work, ignore_errors=True)  # a failed run keeps its history and logs


async def _replicas_fed(stack: IsolatedStack, timeout: float = 60.0) -> None:
    """Until the order service's customer and product replicas hold the sample export."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn = await asyncpg.connect(stack.dsn("order"))
        try:
            customers = await conn.fetchval("SELECT count(*) FROM customer")
            products = await conn.fetchval("SELECT count(*) FROM product")
        finally:
            await conn.close()
        if customers and products:
            await asyncio.sleep(1.0)  # the rest of the export is right behind the first rows
            return
        await asyncio.sleep(0.5)
    raise StackError("the order service's replicas were never fed")


async def _consumers_back(rabbit: PrivateRabbit, queues: list[str]) -> tuple[dict[str, int], float]:
    """The broker's consumer counts once every queue has one, or after CONSUMER_RECOVERY_S."""
    started = time.monotonic()
    while True:
        consumers = await asyncio.to_thread(rabbit.queue_consumers)
        waited = time.monotonic() - started
        if all(consumers.get(q) for q in queues) or waited > CONSUMER_RECOVERY_S:
            return consumers, waited
        await asyncio.sleep(1.0)


async def _drain(stack: IsolatedStack, progress: Callable[[str], None]) -> bool:
    """Until every service is ready, every outbox sent and every queue empty (twice in a row)."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    quiet = 0
    last = ""
    while time.monotonic() < deadline:
        state = await _pending_work(stack)
        if not state:
            quiet += 1
            if quiet >= 3:
                progress("drained")
                return True
        else:
            quiet = 0
            if state != last:
                progress(f"draining: {state}")
                last = state
        await asyncio.sleep(1.0)
    return False


async def _pending_work(stack: IsolatedStack) -> str:
    """What is still in flight, in words; empty when nothing is.

    /readyz is asked last, once the outboxes and queues are empty: asking it earlier could heal
    a service (its check touches the pool) that has to heal by itself.
    """
    waiting = []
    try:
        for service in stack.services:
            conn = await asyncpg.connect(stack.dsn(service.name), timeout=5)
            try:
                unsent = await conn.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
            finally:
                await conn.close()
            if unsent:
                waiting.append(f"{service.name} outbox {unsent}")
        depths = await queue_depths(stack.amqp_url, stack.namespace)
    except Exception as exc:
        return f"servers not answering ({exc.__class__.__name__})"
    waiting += [f"{name} {n}" for name, (n, _) in sorted(depths.items())
                if n and not name.endswith(".dlq")]
    if waiting:
        return ", ".join(waiting)
    async with httpx.AsyncClient(timeout=3.0) as client:
        for name in stack.procs:
            try:
                ready = (await client.get(f"{stack.url(name)}/readyz")).status_code == 200
            except httpx.HTTPError:
                ready = False
            if not ready:
                waiting.append(f"{name} not ready")
    return ", ".join(waiting)


def parse_args(argv: list[str] | None = None) -> RunConfig:
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos.run",
        description="Chaos run: orders by AMQP and HTTP while services are SIGKILLed and the "
                    "(private) broker and database restart; then drain and check that nothing "
                    "was lost, doubled or invented. Exits 1 on any violation.")
    parser.add_argument("--orders", type=int, default=1000, help="orders to submit (1000)")
    parser.add_argument("--rate", type=float, default=12.0, help="orders per second (12)")
    parser.add_argument("--seed", type=int, default=None,
                        help="replay a run: the schedule and the orders come from it (random)")
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs per service (3)")
    parser.add_argument("--rabbit-graceful", type=int, default=0,
                        help="RabbitMQ stop_app/start_app restarts (0)")
    parser.add_argument("--rabbit-kills", type=int, default=0,
                        help="RabbitMQ node SIGKILLs, each started again (0)")
    parser.add_argument("--pg-restarts", type=int, default=0,
                        help="PostgreSQL restarts in immediate mode (0)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the history and the services' logs even when the run passes")
    parser.add_argument("--http-share", type=float, default=0.3,
                        help="share of orders submitted over HTTP, the rest by AMQP (0.3)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    return RunConfig(orders=args.orders, rate=args.rate, seed=seed, kills_per_service=args.kills,
                     rabbit_graceful=args.rabbit_graceful, rabbit_kills=args.rabbit_kills,
                     pg_restarts=args.pg_restarts, http_share=args.http_share, keep=args.keep)


async def _until_signalled(config: RunConfig) -> RunResult:
    """The run, cancelled (so that it still removes its servers) by SIGTERM or SIGINT."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    return await chaos_run(config)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    # The driver's broker connection reconnects through every broker restart; its library
    # would print each lost connection with a traceback.
    for noisy in ("aiormq", "aio_pika"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    started = time.monotonic()
    result = asyncio.run(_until_signalled(config))
    print(result.summary())
    print(f"took {time.monotonic() - started:.0f} s")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
