"""Composition root of the notification service: settings → runtime → subscribers → HTTP app."""

from __future__ import annotations

from fastapi import FastAPI

from services.notification import api, permissions, subscribers
from services.notification.config import Settings
from services.notification.rules import load_rules
from services.notification.unit_of_work import NAME, sql_unit_of_work
from shared.runtime import Runtime
from shared.web.dead_letters import dead_letters_router


def build(settings: Settings | None = None) -> tuple[Runtime, FastAPI]:
    """Wire the service; nothing connects until the app starts."""
    settings = settings or Settings()
    rules = load_rules(settings.rules_file)  # a bad rule stops the start, naming it
    runtime = Runtime.build(NAME, settings)
    uow = sql_unit_of_work(runtime.engine)
    subscribers.register(runtime.broker, runtime.topology, uow, rules)
    app = runtime.app(routers=[api.router, api.people_router, dead_letters_router(NAME)],
                      uow=uow, permissions=permissions.PERMISSIONS)
    app.state.rules = rules
    return runtime, app


def main() -> None:
    """Run the notification service until SIGINT/SIGTERM."""
    Runtime.main(build)


if __name__ == "__main__":
    main()
