"""Composition root of the erp_adapter: settings → runtime → HTTP app.

It consumes nothing yet (reference data flows out only); its outbox relay publishes the
`erp.*` events that imports leave in the outbox, including imports run by the command line
while the service was down.
"""

from __future__ import annotations

from fastapi import FastAPI

from services.erp_adapter import api, publishers
from services.erp_adapter.config import NAME, Settings
from services.erp_adapter.unit_of_work import sql_unit_of_work
from shared.runtime import Runtime


def build(settings: Settings | None = None) -> tuple[Runtime, FastAPI]:
    """Wire the service; nothing connects until the app starts."""
    settings = settings or Settings()
    runtime = Runtime.build(NAME, settings)
    uow = sql_unit_of_work(runtime.engine)
    runtime.document_events(publishers.PUBLISHED)
    app = runtime.app(title="Spine erp_adapter", routers=[api.router])
    app.state.uow = uow
    return runtime, app


def main() -> None:
    runtime, app = build()
    runtime.serve(app)


if __name__ == "__main__":
    main()
