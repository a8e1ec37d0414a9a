"""Process wiring every service shares: broker + relay + HTTP in one event loop, and a clean stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI
from faststream.rabbit import RabbitBroker
from faststream.specification import AsyncAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import crashpoints
from shared.auth import make_verifier
from shared.config import ServiceSettings
from shared.contracts.envelope import Envelope
from shared.db.engine import make_engine
from shared.http import install_error_handlers, ops_router
from shared.messaging.broker import delivery_policy, make_broker
from shared.messaging.delivery import describe
from shared.messaging.provenance import Senders
from shared.messaging.relay import OutboxRelay
from shared.messaging.topology import Topology, binding_keys, consumer_queues
from shared.telemetry import setup_logging, setup_tracing
from shared.web.body_limit import BodyLimit
from shared.web.permissions import Door, Permissions, documented_routes

log = logging.getLogger("spine.runtime")

# How long a starting service waits for its first broker connection before it serves anyway.
_FIRST_CONNECT_WAIT_S = 5.0


@dataclass
class Runtime:
    """The long-lived resources of one service process."""

    name: str
    settings: ServiceSettings
    engine: AsyncEngine
    broker: RabbitBroker
    topology: Topology
    relay: OutboxRelay
    # Until the broker is connected and the consumers started: why not (None once they are).
    messaging_pending: str | None = "not connected yet"
    # Background loops of the service (a timer), run beside the consumers: name → coroutine.
    workers: dict[str, Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=dict)
    # Queue name → the binding keys the service wants there, when they are not the registry's
    # (the notification service binds the events its rules name), and keys to remove.
    bindings: dict[str, tuple[str, ...]] = field(default_factory=dict)
    retired_bindings: dict[str, tuple[str, ...]] = field(default_factory=dict)
    _messaging: asyncio.Task[None] = field(init=False, repr=False)

    @classmethod
    def build(cls, name: str, settings: ServiceSettings) -> Runtime:
        setup_logging(name, settings.log_level)
        setup_tracing(name)
        crashpoints.arm(settings.crash_points, settings.crash_after)
        topology = Topology(settings.namespace, settings.delivery_limit,
                            declare=settings.declare_topology)
        engine = make_engine(settings.database_url, pool_size=settings.db_pool_size, service=name)
        broker = make_broker(
            settings.amqp_url, service=name, topology=topology, prefetch=settings.prefetch,
            senders=Senders.of(settings.publishers), retry_limit=settings.retry_limit,
            max_message_bytes=settings.max_message_bytes,
        )
        relay = OutboxRelay(engine, settings.amqp_url, topology, name=name)
        return cls(name, settings, engine, broker, topology, relay)

    def document_events(self, events: Mapping[str, type[Any]]) -> None:
        """List the events this service publishes (via its outbox) in its AsyncAPI document."""
        for routing_key, model in events.items():
            self.broker.publisher(
                routing_key=routing_key,
                exchange=self.topology.events,
                persist=True,
                title=routing_key,
                description=(model.__doc__ or "").strip() or None,
                schema=Envelope[model],  # type: ignore[valid-type]
            )

    async def declare_dead_letters(self) -> None:
        """Every queue this service consumes gets its dead-letter queue on the dead-letter exchange."""
        dlx = await self.broker.declare_exchange(self.topology.dead_letters)
        for queue in consumer_queues(self.topology, self.name):
            dlq = await self.broker.declare_queue(self.topology.dead_letter_queue(queue.name))
            await dlq.bind(dlx, routing_key=queue.name)

    async def bind_queues(self) -> None:
        """Bind each consumed queue to every key it needs, beyond the subscriber's first one.

        Binding needs no configure right (write on the queue, read on the exchange), so this
        works where `spine topology declare` made the queues; unbinding a key that is not bound
        is no error, so retired keys are removed on every start.
        """
        events = await self.broker.declare_exchange(self.topology.events)
        for spec in consumer_queues(self.topology, self.name):
            purpose = spec.name.removeprefix(f"{self.topology.namespace}.{self.name}.")
            keys = self.bindings.get(spec.name) or binding_keys(self.name, purpose)
            queue = await self.broker.declare_queue(spec)
            for key in keys:
                await queue.bind(events, routing_key=key)
            for key in self.retired_bindings.get(spec.name, ()):
                if key not in keys:
                    await queue.unbind(events, routing_key=key)

    async def start_messaging(self) -> None:
        """Connect, declare, start consuming; while the broker is down, wait and try again.

        A service starts whatever is down: HTTP answers (`/readyz` says what it waits for),
        the relay keeps events in the outbox, and the consumers start once the broker is back.
        """
        delay = 0.5
        while True:
            try:
                await self.broker.connect()
                await self.broker.declare_exchange(self.topology.events)
                await self.declare_dead_letters()
                await self.broker.start()
                await self.bind_queues()
            except Exception as exc:
                self.messaging_pending = f"waiting for the broker: {describe(exc)}"
                log.warning("%s: broker not ready (%s); trying again in %.1f s", self.name,
                            describe(exc), delay)
                with contextlib.suppress(Exception):
                    await self.broker.stop()  # a half-made connection, so the next try is fresh
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            self.messaging_pending = None
            log.info("%s consuming from the broker", self.name)
            return

    async def started(self) -> None:
        """Until the consumers run (after `lifespan` began): what a test waits for."""
        await asyncio.shield(self._messaging)

    def readiness(self) -> dict[str, str]:
        """The checks `/readyz` adds to the database's and the broker's: consumers, held work."""
        held = delivery_policy(self.broker).readiness()
        return {"consumers": self.messaging_pending or "ok", "messages": held or "ok"}

    @asynccontextmanager
    async def lifespan(self, _: FastAPI) -> AsyncIterator[None]:
        messaging = self._messaging = asyncio.create_task(
            self.start_messaging(), name=f"{self.name}-messaging")
        relay = asyncio.create_task(self.relay.run(), name=f"{self.name}-relay")
        workers = [asyncio.create_task(run(), name=f"{self.name}-{name}")
                   for name, run in self.workers.items()]
        # With the broker up, the consumers run before the first request is served; with it
        # down, the service serves (not ready) and its consumers start when the broker is back.
        await asyncio.wait([messaging], timeout=_FIRST_CONNECT_WAIT_S)
        log.info("%s serving on http://%s:%d (docs at /docs)%s", self.name,
                 self.settings.http_host, self.settings.port,
                 "" if messaging.done() else "; waiting for the broker")
        try:
            yield
        finally:
            # Stop taking messages first; in-flight ones finish and are acked (or are redelivered
            # if they cannot finish in the graceful timeout). Events they committed but the relay
            # had no time to send stay in the outbox and go out at the next start.
            for task in (messaging, *workers):
                task.cancel()
            await asyncio.gather(messaging, *workers, return_exceptions=True)
            await self.broker.stop()
            await self.relay.stop()
            await asyncio.gather(relay, return_exceptions=True)
            await self.engine.dispose()
            log.info("%s stopped cleanly", self.name)

    def app(self, *, routers: list[Any], uow: Any, permissions: Permissions,
            published: Mapping[str, type[Any]] | None = None,
            body_limits: Mapping[str, int] | None = None) -> FastAPI:
        """The service's FastAPI app: its routes, ops routes, problem responses, AsyncAPI document.

        `uow` is what the routes' `unit_of_work` dependency hands out; `permissions` is the
        service's matrix, enforced before any route runs (an app serving a route the matrix
        does not name is refused here); `published` lists the events the service's outbox
        sends, for the AsyncAPI document; `body_limits` the paths that accept a larger body
        than `max_body_bytes` (in bytes).
        """
        if published:
            self.document_events(published)
        app = FastAPI(title=f"Spine {self.name}", lifespan=self.lifespan, version="1.0.0")
        app.state.uow = uow
        app.state.jwt = verifier = make_verifier(self.settings)
        app.state.runtime = self
        service_routes = [route for router in routers for route in router.routes]
        # Added first, so it sits inside the metrics middleware: refusals are counted too.
        app.add_middleware(Door, routes=service_routes, permissions=permissions, verifier=verifier)
        # Added before the metrics middleware, so that wraps it and counts its 413s too.
        app.add_middleware(BodyLimit, default=self.settings.max_body_bytes, routes=body_limits)
        install_error_handlers(app, self.name)
        app.include_router(ops_router(self.engine, self.broker, self.readiness))
        for router in routers:
            app.include_router(router)

        spec = AsyncAPI(self.broker, title=f"Spine {self.name} events", version="1.0.0")

        @app.get("/asyncapi.json", tags=["ops"], summary="AsyncAPI catalogue of this service's events")
        async def asyncapi() -> Any:
            return spec.to_specification().to_jsonable()

        permissions.check_covers(service_routes, documented_routes(app.openapi()))
        return app

    @classmethod
    def main(cls, build: Callable[[], tuple[Runtime, FastAPI]]) -> None:
        """A service's `main()`: build it, then serve until SIGINT/SIGTERM."""
        runtime, app = build()
        runtime.serve(app)

    def serve(self, app: FastAPI) -> None:
        """Run until SIGINT/SIGTERM, then shut down gracefully."""
        config = uvicorn.Config(
            app,
            host=self.settings.http_host,
            port=self.settings.port,
            loop="uvloop",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=20,
        )
        server = uvicorn.Server(config)

        def exit_code(_signum: int, _frame: FrameType | None) -> None:
            # uvicorn re-raises the SIGTERM it shut down on, which would make a clean stop look
            # like a kill (-15, 143 in a shell) to the supervisor; a stop cut short stays 143.
            raise SystemExit(128 + signal.SIGTERM if server.force_exit else 0)

        signal.signal(signal.SIGTERM, exit_code)
        server.run()
