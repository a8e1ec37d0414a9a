"""Composition root of the notification service: settings → runtime → subscribers → HTTP app."""

from __future__ import annotations

from fastapi import FastAPI

from services.notification import api, permissions, subscribers
from services.notification.config import Settings
from services.notification.unit_of_work import NAME, sql_unit_of_work
from shared.runtime import Runtime
from shared.web.dead_letters import dead_letters_router


def build(settings: Settings | None = None) -> tuple[Runtime, FastAPI]:
    """Wire the service; nothing connects until the app starts."""
    runtime = Runtime.build(NAME, settings or Settings())
    uow = sql_unit_of_work(runtime.engine)
    subscribers.register(runtime.broker, runtime.topology, uow)
    return runtime, runtime.app(routers=[api.router, dead_letters_router(NAME)], uow=uow,
                                permissions=permissions.PERMISSIONS)


def main() -> None:
    """Run the notification service until SIGINT/SIGTERM."""
    Runtime.main(build)


if __name__ == "__main__":
    main()
