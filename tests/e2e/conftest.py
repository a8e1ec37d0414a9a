"""The whole system as real processes: four services on their own databases and namespace."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest

from shared.auth import JwtVerifier
from shared.contracts.envelope import Actor, new_envelope
from shared.db.migrate import drop_database, ensure_database, upgrade
from shared.messaging.topology import Topology, declare_all
from tests.conftest import RabbitJanitor, Servers

ROOT = Path(__file__).resolve().parents[2]
# (python package, database suffix)
SERVICES = {"order": "order", "dispatch": "dispatch", "notification": "notification",
            "erp_adapter": "erp"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Stack:
    """Handles on the running system: URLs, tokens, a watch queue on the event exchange."""

    namespace: str
    servers: Servers
    secret: str
    ports: dict[str, int]
    logs: dict[str, Path]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    connection: aio_pika.abc.AbstractRobustConnection | None = None
    watch: aio_pika.abc.AbstractQueue | None = None
    seen: list[dict[str, Any]] = field(default_factory=list)

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def headers(self, *roles: str, sub: str | None = None) -> dict[str, str]:
        token = JwtVerifier(self.secret).issue(sub or f"u-{roles[0]}", list(roles))
        return {"Authorization": f"Bearer {token}"}

    async def publish(self, routing_key: str, body: bytes, *, message_id: str | None = None) -> None:
        assert self.connection is not None
        channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        try:
            exchange = await channel.get_exchange(f"{self.namespace}.events")
            await exchange.publish(
                aio_pika.Message(body, message_id=message_id or str(uuid.uuid4()),
                                 content_type="application/json",
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=routing_key,
            )
        finally:
            await channel.close()

    async def submit_order(self, system: str, data: dict[str, Any], *, times: int = 1) -> str:
        """Publish one `ext.<system>.order.submitted` envelope `times` times (same message id)."""
        envelope = new_envelope(type=f"ext.{system}.order.submitted", producer=system, data=data,
                                actor=Actor(id=system, role="integration"))
        body = json.dumps(envelope).encode()
        for _ in range(times):
            await self.publish(envelope["type"], body, message_id=envelope["event_id"])
        return str(envelope["correlation_id"])

    async def events(self, predicate: Any, *, count: int = 1, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Wait until `count` events seen on the exchange match `predicate`; return them."""
        assert self.watch is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            matching = [e for e in self.seen if predicate(e)]
            if len(matching) >= count:
                return matching
            message = await self.watch.get(no_ack=True, fail=False)
            if message is None:
                await asyncio.sleep(0.05)
                continue
            event = json.loads(message.body)
            event["_amqp"] = {"message_id": message.message_id,
                              "correlation_id": message.correlation_id,
                              "delivery_mode": message.delivery_mode,
                              "headers": dict(message.headers or {})}
            self.seen.append(event)
        matching = [e for e in self.seen if predicate(e)]
        raise AssertionError(
            f"expected {count} matching events within {timeout}s, saw {len(matching)}; "
            f"all seen: {[e['type'] for e in self.seen]}"
        )

    def log_text(self) -> str:
        return "\n".join(f"--- {name}\n{path.read_text()}" for name, path in self.logs.items())


def spawn_service(
    name: str, servers: Servers, namespace: str, port: int, log: Path
) -> subprocess.Popen[bytes]:
    """Start `python -m services.<name>.main` on its own namespace, databases and port."""
    env = {**os.environ, **servers.env, "SPINE_NAMESPACE": namespace, "SPINE_DB_PREFIX": namespace,
           "PYTHONPATH": str(ROOT), "SPINE_LOG_LEVEL": "INFO", "SPINE_HTTP_PORT": str(port)}
    return subprocess.Popen(
        [sys.executable, "-m", f"services.{name}.main"],
        cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )


async def _wait_ready(stack: Stack, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    pending = set(SERVICES)
    async with httpx.AsyncClient(timeout=2.0) as client:
        while pending and time.monotonic() < deadline:
            for name in list(pending):
                proc = stack.procs[name]
                if proc.poll() is not None:
                    raise AssertionError(f"{name} exited with {proc.returncode}:\n{stack.log_text()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{stack.url(name)}/readyz")).status_code == 200:
                        pending.discard(name)
            await asyncio.sleep(0.2)
    if pending:
        raise AssertionError(f"not ready after {timeout}s: {sorted(pending)}\n{stack.log_text()}")


@pytest.fixture(scope="session")
async def stack(
    servers: Servers, session_namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    """Migrate four fresh databases, start the four services, load the sample ERP export."""
    ns = session_namespace
    pg_async = servers.pg_url.replace("postgresql://", "postgresql+asyncpg://", 1)
    for package, suffix in SERVICES.items():
        await ensure_database(servers.pg_url, f"{ns}_{suffix}")
        await asyncio.to_thread(upgrade, package, f"{pg_async}/{ns}_{suffix}")
    declared: list[str] = []
    connection = await aio_pika.connect(servers.amqp_url)
    try:
        # As `make run` does: every queue exists before any service can publish.
        declared = await declare_all(await connection.channel(), Topology(ns))
    finally:
        await connection.close()
    logdir = tmp_path_factory.mktemp("service-logs")
    stack = Stack(
        namespace=ns, servers=servers, secret=os.environ["SPINE_JWT_SECRET"],
        ports={name: free_port() for name in SERVICES},
        logs={name: logdir / f"{name}.log" for name in SERVICES},
    )
    try:
        for name in SERVICES:
            stack.procs[name] = spawn_service(name, servers, ns, stack.ports[name], stack.logs[name])
        await _wait_ready(stack)
        stack.connection = await aio_pika.connect_robust(servers.amqp_url)
        channel = await stack.connection.channel()
        # Durable: a test that restarts the broker must not take the other tests' eyes away.
        stack.watch = await channel.declare_queue(f"{ns}.e2e.watch", durable=True,
                                                  auto_delete=False)
        await stack.watch.bind(f"{ns}.events", "#")
        await _load_reference_data(stack)
        yield stack
    finally:
        await _stop(stack)
        janitor = RabbitJanitor(servers.amqp_url)
        janitor.namespace(ns)
        janitor.queue(f"{ns}.e2e.watch")
        for name in declared:
            janitor.queue(name)
        if stack.connection is not None:
            await stack.connection.close()
        await janitor.clean()
        for suffix in SERVICES.values():
            await drop_database(servers.pg_url, f"{ns}_{suffix}")


async def _load_reference_data(stack: Stack) -> None:
    """Upload the sample ERP export through the erp_adapter, as an integration user would."""
    async with httpx.AsyncClient(base_url=stack.url("erp_adapter"), timeout=30) as client:
        for path in ("samples/erp/customers.csv", "samples/erp/products.json"):
            with open(ROOT / path, "rb") as fh:
                response = await client.post(
                    "/imports", files={"file": (Path(path).name, fh.read())},
                    headers=stack.headers("integration"),
                )
            assert response.status_code == 200, response.text
    # The order service's replicas are fed by events: wait until they are there.
    await stack.events(lambda e: e["type"] == "erp.product.upserted", count=1)
    await stack.events(lambda e: e["type"] == "erp.customer.upserted", count=1)
    await asyncio.sleep(0.5)


async def _stop(stack: Stack) -> None:
    """SIGTERM every service; each must stop by itself, cleanly, without a traceback."""
    for proc in stack.procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    problems = []
    for name, proc in stack.procs.items():
        try:
            code = await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            problems.append(f"{name} did not stop within 30 s of SIGTERM")
            continue
        # uvicorn re-raises SIGTERM after its clean shutdown, so -SIGTERM is a normal stop.
        if code not in (0, -signal.SIGTERM):
            problems.append(f"{name} exited with {code}")
    assert not problems, f"{problems}\n{stack.log_text()}"
