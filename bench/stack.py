"""An isolated Spine stack for one benchmark run: its own databases, namespace and processes.

It is started the way the end-to-end tests start theirs (tests/e2e/conftest.py): fresh databases
`<prefix>_<service>` migrated with Alembic, `shared.messaging.topology.declare_all` before any
service runs, the four services as real processes on free ports, and the sample ERP export
uploaded through the erp_adapter's HTTP API. `cleanup()` removes the databases, queues and
exchanges again; it is safe to call after a partial start and more than once.

Every name starts with `spinebench_`, so `find_leftovers()` can find what a killed run left.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import ctypes
import json
import os
import secrets
import signal
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import asyncpg
import httpx

from bench.common import say
from shared.auth import JwtVerifier
from shared.db.migrate import drop_database, ensure_database, upgrade
from shared.messaging.topology import (
    Topology,
    declare_all,
    delete_broker_objects,
    namespace_objects,
)

ROOT = Path(__file__).resolve().parents[1]
NAME_PREFIX = "spinebench_"
# python package → database suffix, as the services name their databases.
SERVICES = {"order": "order", "dispatch": "dispatch", "notification": "notification",
            "erp_adapter": "erp"}
ERP_SAMPLES = ("samples/erp/customers.csv", "samples/erp/products.json")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child: SIGTERM when the bench process dies outright, so no service is orphaned."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def sample_counts() -> tuple[int, int]:
    """How many customers and products the sample ERP export holds (what the replicas must reach)."""
    with open(ROOT / ERP_SAMPLES[0], newline="") as fh:
        customers = sum(1 for _ in csv.DictReader(fh))
    products = len(json.loads((ROOT / ERP_SAMPLES[1]).read_text())["products"])
    return customers, products


@dataclass
class Stack:
    """Handles on one isolated stack. Build with `Stack.new(...)`, then `await start()`."""

    namespace: str
    pg_url: str
    amqp_url: str
    prefetch: int
    log_dir: Path
    log_level: str = "WARNING"
    secret: str = field(default_factory=lambda: secrets.token_hex(32))
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)
    databases: list[str] = field(default_factory=list)
    queues: list[str] = field(default_factory=list)
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    _cleaned: bool = False

    @classmethod
    def new(cls, *, pg_url: str, amqp_url: str, prefetch: int, log_dir: Path,
            log_level: str = "WARNING") -> Stack:
        return cls(namespace=f"{NAME_PREFIX}{uuid.uuid4().hex[:8]}", pg_url=pg_url.rstrip("/"),
                   amqp_url=amqp_url, prefetch=prefetch, log_dir=log_dir, log_level=log_level)

    # ------------------------------------------------------------------ names
    def database(self, service: str) -> str:
        return f"{self.namespace}_{SERVICES[service]}"

    def dsn(self, service: str) -> str:
        """asyncpg DSN of a service's database."""
        return f"{self.pg_url}/{self.database(service)}"

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    @property
    def exchange(self) -> str:
        return f"{self.namespace}.events"

    def log_path(self, service: str) -> Path:
        return self.log_dir / f"{self.namespace}-{service}.log"

    def pids(self) -> dict[int, str]:
        return {p.pid: name for name, p in self.procs.items()}

    # ------------------------------------------------------------------ start
    async def start(self, ready_limit_s: float = 90.0) -> None:
        """Databases, topology, the four services, reference data. Raises on any failure."""
        self.queues, _ = namespace_objects(self.namespace)
        pg_async = self.pg_url.replace("postgresql://", "postgresql+asyncpg://", 1)
        for package in SERVICES:
            name = self.database(package)
            self.databases.append(name)  # before creating it: a failure half-way still drops it
            if not await ensure_database(self.pg_url, name):
                raise RuntimeError(f"database {name} already exists: refusing to reuse it")
            await asyncio.to_thread(upgrade, package, f"{pg_async}/{name}")
        connection = await aio_pika.connect(self.amqp_url)
        try:
            declared = await declare_all(await connection.channel(), Topology(self.namespace))
        finally:
            await connection.close()
        self.queues = sorted(set(self.queues) | set(declared))

        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "SPINE_AMQP_URL": self.amqp_url,
               "SPINE_PG_URL": self.pg_url, "SPINE_DB_PREFIX": self.namespace,
               "SPINE_NAMESPACE": self.namespace, "SPINE_JWT_SECRET": self.secret,
               "SPINE_PREFETCH": str(self.prefetch), "SPINE_LOG_LEVEL": self.log_level}
        for name in SERVICES:
            self.ports[name] = free_port()
            with self.log_path(name).open("wb") as log:
                # Own session: a Ctrl-C in the terminal reaches the bench, which stops the
                # services itself (SIGTERM, a clean shutdown) before it drops their databases.
                self.procs[name] = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", f"services.{name}.main",
                    cwd=ROOT, env={**env, "SPINE_HTTP_PORT": str(self.ports[name])},
                    stdout=log, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
        await self._wait_ready(ready_limit_s)
        await self._load_reference_data(ready_limit_s)

    async def _wait_ready(self, limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        pending = set(SERVICES)
        async with httpx.AsyncClient(timeout=2.0) as client:
            while pending and time.monotonic() < deadline:
                for name in sorted(pending):
                    if (code := self.procs[name].returncode) is not None:
                        raise RuntimeError(f"{name} exited with {code} while starting:\n"
                                           f"{self.log_tail(name)}")
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get(f"{self.url(name)}/readyz")).status_code == 200:
                            pending.discard(name)
                await asyncio.sleep(0.2)
        if pending:
            raise RuntimeError(f"not ready after {limit_s:.0f}s: {sorted(pending)}")

    async def _load_reference_data(self, limit_s: float) -> None:
        """Upload the sample ERP export; wait until the order service's replicas hold all of it."""
        token = JwtVerifier(self.secret).issue("bench-integration", ["integration"])
        async with httpx.AsyncClient(base_url=self.url("erp_adapter"), timeout=30) as client:
            for path in ERP_SAMPLES:
                response = await client.post(
                    "/imports", files={"file": (Path(path).name, (ROOT / path).read_bytes())},
                    headers={"Authorization": f"Bearer {token}"},
                )
                if response.status_code != 200:
                    raise RuntimeError(f"ERP upload of {path}: HTTP {response.status_code} "
                                       f"{response.text[:300]}")
        customers, products = sample_counts()
        conn = await asyncpg.connect(self.dsn("order"))
        try:
            deadline = time.monotonic() + limit_s
            while True:
                have = await conn.fetchrow(
                    "SELECT (SELECT count(*) FROM customer) AS c, (SELECT count(*) FROM product) AS p")
                if have["c"] >= customers and have["p"] >= products:
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"order replicas incomplete after {limit_s:.0f}s: "
                                       f"{have['c']}/{customers} customers, {have['p']}/{products} "
                                       "products")
                await asyncio.sleep(0.1)
        finally:
            await conn.close()

    # ------------------------------------------------------------------ stop & cleanup
    async def stop(self, grace_s: float = 30.0) -> list[str]:
        """SIGTERM every service (a graceful stop); returns the problems (empty when clean)."""
        for proc in self.procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        problems = []
        for name, proc in self.procs.items():
            try:
                code: int | None = await asyncio.wait_for(proc.wait(), grace_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                code = await proc.wait()
                problems.append(f"{name} did not stop within {grace_s:.0f}s of SIGTERM (killed)")
            self.exit_codes[name] = code
            # uvicorn re-raises SIGTERM after its clean shutdown, so -SIGTERM is a normal stop.
            if code not in (0, -signal.SIGTERM, None):
                problems.append(f"{name} exited with {code}")
        return problems

    async def cleanup(self) -> list[str]:
        """Stop what still runs, delete the queues and exchanges, drop the databases."""
        if self._cleaned:
            return []
        self._cleaned = True
        failures: list[str] = []
        if any(p.returncode is None for p in self.procs.values()):
            failures += await self.stop()
        failures += await delete_broker_objects(
            self.amqp_url, self.queues, [self.exchange, f"{self.namespace}.dlx"])
        for name in self.databases:
            try:
                await drop_database(self.pg_url, name)
            except Exception as exc:
                failures.append(f"database {name}: {exc}")
        return failures

    def log_tail(self, service: str, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path(service).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def log_lines(self, service: str) -> list[str]:
        """What a service logged (at WARNING level, every line is a warning or worse)."""
        try:
            return self.log_path(service).read_text(errors="replace").splitlines()
        except OSError:
            return []


async def find_leftovers(pg_url: str) -> list[str]:
    """Namespaces of earlier bench runs whose databases are still there (e.g. after kill -9)."""
    conn = await asyncpg.connect(f"{pg_url.rstrip('/')}/postgres")
    try:
        rows = await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE $1",
                                NAME_PREFIX.replace("_", r"\_") + "%")
    finally:
        await conn.close()
    suffixes = tuple(f"_{s}" for s in SERVICES.values())
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
        for suffix in SERVICES.values():
            await drop_database(pg_url, f"{ns}_{suffix}")
    return namespaces
