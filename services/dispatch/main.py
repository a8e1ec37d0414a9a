"""Composition root of the dispatch service: settings → runtime → subscribers → HTTP app."""

from __future__ import annotations

from fastapi import FastAPI

from services.dispatch import api, permissions, publishers, subscribers
from services.dispatch.config import Settings
from services.dispatch.escalation import run_escalation_timer
from services.dispatch.unit_of_work import NAME, sql_unit_of_work
from shared.runtime import Runtime
from shared.web.dead_letters import dead_letters_router


def build(settings: Settings | None = None) -> tuple[Runtime, FastAPI]:
    """Wire the service; nothing connects until the app starts."""
    settings = settings or Settings()
    runtime = Runtime.build(NAME, settings)
    uow = sql_unit_of_work(runtime.engine)
    subscribers.register(runtime.broker, runtime.topology, uow,
                         system_roles=settings.roles_of_systems())
    runtime.workers["escalation"] = lambda: run_escalation_timer(uow, settings.escalation_interval_s)
    return runtime, runtime.app(routers=[api.router, api.exceptions_router, api.approvals_router,
                                         api.timeline_router, dead_letters_router(NAME)], uow=uow,
                                permissions=permissions.PERMISSIONS,
                                published=publishers.PUBLISHED)


def main() -> None:
    """Run the dispatch service until SIGINT/SIGTERM."""
    Runtime.main(build)


if __name__ == "__main__":
    main()
