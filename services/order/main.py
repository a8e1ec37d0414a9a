"""Composition root of the order service: settings → runtime → subscribers → HTTP app."""

from __future__ import annotations

from fastapi import FastAPI

from services.order import api, permissions, publishers, subscribers
from services.order.config import Settings
from services.order.unit_of_work import NAME, sql_unit_of_work
from shared.ratelimit import RateLimiter
from shared.runtime import Runtime
from shared.web.dead_letters import dead_letters_router
from shared.web.rate_limit import use_rate_limiter


def build(settings: Settings | None = None) -> tuple[Runtime, FastAPI]:
    """Wire the service; nothing connects until the app starts."""
    settings = settings or Settings()
    runtime = Runtime.build(NAME, settings)
    uow = sql_unit_of_work(runtime.engine)
    subscribers.register(runtime.broker, runtime.topology, uow,
                         intake_limits=RateLimiter(settings.intake_limits))
    app = runtime.app(routers=[api.router, api.timeline_router, dead_letters_router(NAME)], uow=uow,
                      permissions=permissions.PERMISSIONS, published=publishers.PUBLISHED)
    use_rate_limiter(app, RateLimiter(settings.http_limits))
    return runtime, app


def main() -> None:
    """Run the order service until SIGINT/SIGTERM."""
    Runtime.main(build)


if __name__ == "__main__":
    main()
