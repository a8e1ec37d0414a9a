"""The whole system as real processes: four services on their own databases and namespace."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.message
import email.policy
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest
from aiosmtpd.controller import Controller

from shared.auth import JwtVerifier
from shared.contracts.envelope import Actor, new_envelope
from shared.messaging.permissions import broker_user
from shared.stack import ROOT, IsolatedStack, StackError, free_port
from tests.conftest import Servers, unique_name

__all__ = ["ROOT", "Stack", "running_stack"]


@dataclass
class Stack(IsolatedStack):
    """The isolated stack, plus what tests use: tokens, publishing, a watch queue on the exchange."""

    connection: aio_pika.abc.AbstractRobustConnection | None = None
    watch: aio_pika.abc.AbstractQueue | None = None
    seen: list[dict[str, Any]] = field(default_factory=list)
    # Every mail the notification service sent: the stack's SMTP server is a real one (aiosmtpd).
    mails: list[email.message.EmailMessage] = field(default_factory=list)
    # Every token the tests sent: none may ever appear in a service's log.
    tokens: list[str] = field(default_factory=list)

    def headers(self, *roles: str, sub: str | None = None) -> dict[str, str]:
        token = JwtVerifier(self.secret).issue(sub or f"u-{roles[0]}", list(roles))
        self.tokens.append(token)
        return {"Authorization": f"Bearer {token}"}

    async def publish(self, routing_key: str, body: bytes, *, message_id: str | None = None) -> None:
        assert self.connection is not None
        channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        try:
            exchange = await channel.get_exchange(f"{self.namespace}.events")
            await exchange.publish(
                aio_pika.Message(body, message_id=message_id or str(uuid.uuid4()),
                                 content_type="application/json",
                                 user_id=broker_user(self.amqp_url),
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
            try:
                event = json.loads(message.body)
            except (ValueError, RecursionError):
                event = None
            if (not isinstance(event, dict) or not isinstance(event.get("type"), str)
                    or not isinstance(event.get("data"), dict)):
                continue  # a test's deliberately broken message: no event to wait for
            event["_amqp"] = {"message_id": message.message_id,
                              "correlation_id": message.correlation_id,
                              "delivery_mode": message.delivery_mode,
                              "headers": dict(message.headers or {})}
            self.seen.append(event)
        matching = [e for e in self.seen if predicate(e)]
        raise AssertionError(
            f"expected {count} matching events within {timeout}s, saw {len(matching)}; "
            f"all seen: {[e.get('type') for e in self.seen]}"
        )


@contextlib.asynccontextmanager
async def running_stack(servers: Servers, namespace: str, log_dir: Path,
                        extra_env: dict[str, str] | None = None) -> AsyncIterator[Stack]:
    """Migrate four fresh databases, start the four services, load the sample ERP export.

    `extra_env`: more SPINE_* variables for every service (an export folder, say). On the way
    out every service must stop by itself, cleanly, without a traceback.
    """
    smtp_port = free_port()
    stack = Stack(
        namespace=namespace, pg_url=servers.pg_url, amqp_url=servers.amqp_url,
        log_dir=log_dir, secret=os.environ["SPINE_JWT_SECRET"],
        # Two stacks can be up at once (the session's and a module's); at the default pool size
        # they could take every connection of a stock PostgreSQL (max_connections = 100).
        # The notification service mails through this stack's own SMTP server, checking often.
        extra_env={"SPINE_DB_POOL_SIZE": "6", "SPINE_SMTP_HOST": "127.0.0.1",
                   "SPINE_SMTP_PORT": str(smtp_port), "SPINE_SENDER_INTERVAL_S": "0.2",
                   **(extra_env or {})},
    )
    smtp = Controller(_Mailbox(stack.mails), hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    problems: list[str] = []
    try:
        try:
            await stack.start(ready_timeout_s=60.0)
        except StackError as exc:
            raise AssertionError(str(exc)) from exc
        stack.connection = await aio_pika.connect_robust(servers.amqp_url)
        channel = await stack.connection.channel()
        # Durable: a test that restarts the broker must not take the other tests' eyes away.
        watch_name = f"{stack.namespace}.e2e.watch"
        stack.queues.append(watch_name)
        stack.watch = await channel.declare_queue(watch_name, durable=True, auto_delete=False)
        await stack.watch.bind(stack.exchange, "#")
        await _load_reference_data(stack)
        await _load_people(stack)
        yield stack
    finally:
        problems = await stack.stop()
        if stack.connection is not None:
            await stack.connection.close()
        await stack.cleanup()
        smtp.stop()
    assert not problems, f"{problems}\n{stack.log_text()}"


@pytest.fixture(scope="session")
async def stack(
    servers: Servers, session_namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    """The four services on fresh databases, with the sample ERP export loaded, for the session."""
    async with running_stack(servers, session_namespace,
                             tmp_path_factory.mktemp("service-logs")) as running:
        yield running


@pytest.fixture(scope="module")
async def module_stack(servers: Servers, tmp_path_factory: pytest.TempPathFactory
                       ) -> AsyncIterator[Stack]:
    """A stack for one test module alone, for tests that read whole databases and every queue."""
    async with running_stack(servers, unique_name(), tmp_path_factory.mktemp("stack-logs")) as running:
        yield running


class _Mailbox:
    """aiosmtpd handler: keeps every mail it is given."""

    def __init__(self, mails: list[email.message.EmailMessage]) -> None:
        self.mails = mails

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.mails.append(email.message_from_bytes(  # type: ignore[arg-type]
            envelope.content, policy=email.policy.default))
        return "250 OK"


async def _load_people(stack: Stack) -> None:
    """The sample people directory (owners, supervisors, sales with e-mail addresses)."""
    async with httpx.AsyncClient(base_url=stack.url("notification"), timeout=30) as client:
        loaded = await client.post(
            "/people/imports", headers=stack.headers("ops"),
            files={"file": ("people.csv", (ROOT / "samples/people.csv").read_bytes())})
    if loaded.status_code != 200 or loaded.json()["rejected"]:
        raise AssertionError(f"people import: {loaded.status_code} {loaded.text[:300]}")


async def _load_reference_data(stack: Stack) -> None:
    """Upload the sample ERP export, then wait until the order service's replicas are fed."""
    await stack.upload_erp_samples()
    await stack.events(lambda e: e["type"] == "erp.product.upserted", count=1)
    await stack.events(lambda e: e["type"] == "erp.customer.upserted", count=1)
    await asyncio.sleep(0.5)
