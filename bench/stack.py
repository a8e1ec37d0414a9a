"""An isolated Spine stack for one benchmark run: its own databases, namespace and processes.

It is the stack the end-to-end tests start (`shared.stack.IsolatedStack`): fresh databases
`<prefix>_<suffix>` migrated with Alembic, `declare_all` before any service runs, the four
services as real processes on free ports, here at WARNING level with the bench's prefetch. The
sample ERP export is then uploaded through the erp_adapter's HTTP API and the start waits until
the order service's replicas hold all of it. `cleanup()` removes the databases, queues and
exchanges again; it is safe to call after a partial start and more than once.

Every name starts with `spinebench_`, so `find_leftovers()` can find what a killed run left.
"""

from __future__ import annotations

import asyncio
import csv
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from bench.common import say
from shared import registry
from shared.db.roles import DatabaseRoles, drop_database_and_roles
from shared.messaging.topology import delete_broker_objects, namespace_objects
from shared.stack import ERP_SAMPLES, ROOT, IsolatedStack, StackError

# The reference's third step stores a notification per dispatch. The notification service binds
# only the event types its rules name, and no shipped rule names `dispatch.created`; this file's
# one rule does (an inbox entry for the planners), so Spine's third step is that same work: the
# event observed once and its notification stored, in one transaction.
BENCH_RULES = Path(__file__).with_name("rules.json")

__all__ = ["ROOT", "Stack", "find_leftovers", "remove_leftovers", "sample_counts"]

NAME_PREFIX = "spinebench_"


def sample_counts() -> tuple[int, int]:
    """How many customers and products the sample ERP export holds (what the replicas must reach)."""
    with open(ROOT / ERP_SAMPLES[0], newline="") as fh:
        customers = sum(1 for _ in csv.DictReader(fh))
    products = len(json.loads((ROOT / ERP_SAMPLES[1]).read_text())["products"])
    return customers, products


@dataclass
class Stack(IsolatedStack):
    """Handles on one isolated stack. Build with `Stack.new(...)`, then `await start()`."""

    @classmethod
    def new(cls, *, pg_url: str, amqp_url: str, prefetch: int, log_dir: Path,
            log_level: str = "WARNING") -> Stack:
        return cls(namespace=f"{NAME_PREFIX}{uuid.uuid4().hex[:8]}", pg_url=pg_url,
                   amqp_url=amqp_url, log_dir=log_dir, log_level=log_level,
                   extra_env={"SPINE_PREFETCH": str(prefetch),
                              "SPINE_RULES_FILE": str(BENCH_RULES)})

    async def start(self, ready_timeout_s: float = 90.0) -> None:
        """Databases, topology, the four services, reference data. Raises on any failure."""
        await super().start(ready_timeout_s)
        await self.upload_erp_samples()
        await self._wait_for_replicas(ready_timeout_s)

    async def _wait_for_replicas(self, limit_s: float) -> None:
        customers, products = sample_counts()
        conn = await asyncpg.connect(self.dsn(registry.ORDER.name))
        try:
            deadline = time.monotonic() + limit_s
            while True:
                have = await conn.fetchrow(
                    "SELECT (SELECT count(*) FROM customer) AS c, (SELECT count(*) FROM product) AS p")
                if have["c"] >= customers and have["p"] >= products:
                    return
                if time.monotonic() > deadline:
                    raise StackError(f"order replicas incomplete after {limit_s:.0f}s: "
                                     f"{have['c']}/{customers} customers, {have['p']}/{products} "
                                     "products")
                await asyncio.sleep(0.1)
        finally:
            await conn.close()


async def find_leftovers(pg_url: str) -> list[str]:
    """Namespaces of earlier bench runs whose databases are still there (e.g. after kill -9)."""
    conn = await asyncpg.connect(f"{pg_url.rstrip('/')}/postgres")
    try:
        # A database's roles (`<database>_owner`, `_runtime`) may outlive it after a crash.
        rows = await conn.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE $1 UNION "
            "SELECT regexp_replace(rolname, '_(owner|runtime)$', '') FROM pg_roles "
            "WHERE rolname LIKE $1", NAME_PREFIX.replace("_", r"\_") + "%")
    finally:
        await conn.close()
    suffixes = tuple(f"_{s.database_suffix}" for s in registry.SERVICES)
    found = set()
    for row in rows:
        name: str = row["datname"]
        for suffix in suffixes:
            if name.endswith(suffix):
                found.add(name[: -len(suffix)])
    return sorted(found)


async def remove_leftovers(pg_url: str, amqp_url: str) -> list[str]:
    """Drop the databases, queues and exchanges of every earlier `spinebench_*` run; returns names.

    Only for when no benchmark is running: a live run's objects look the same.
    """
    namespaces = await find_leftovers(pg_url)
    for ns in namespaces:
        for failure in await delete_broker_objects(amqp_url, *namespace_objects(ns)):
            say(f"  cleanup {ns}: {failure}")
        for service in registry.SERVICES:
            await drop_database_and_roles(pg_url, DatabaseRoles.of(service, ns))
    return namespaces
