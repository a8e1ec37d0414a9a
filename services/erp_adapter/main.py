"""Composition root of the erp_adapter: settings → runtime → HTTP app.

It consumes `dispatch.shipped|corrected` (they become delivery confirmations), runs the push
worker that sends them through the configured connector, and its outbox relay publishes the
`erp.*` events, including those of imports run by the command line while it was down.
"""

from __future__ import annotations

from fastapi import FastAPI

from services.erp_adapter import api, permissions, publishers, subscribers
from services.erp_adapter.config import NAME, Settings, load_ownership
from services.erp_adapter.confirmations import Backoff
from services.erp_adapter.connectors import connect
from services.erp_adapter.ownership import OwnershipError
from services.erp_adapter.push import run_push_worker
from services.erp_adapter.unit_of_work import sql_unit_of_work
from shared.runtime import Runtime
from shared.web.dead_letters import dead_letters_router


def build(settings: Settings | None = None) -> tuple[Runtime, FastAPI]:
    """Wire the service; nothing connects until the app starts."""
    config = settings or Settings()
    ownership = load_ownership(config.ownership_file)  # a bad registry stops the start, naming it
    runtime = Runtime.build(NAME, config)
    uow = sql_unit_of_work(runtime.engine)
    connector = connect(config)
    subscribers.register(runtime.broker, runtime.topology, uow, connector=connector.name)
    backoff = Backoff(config.erp_retry_base_s, config.erp_retry_cap_s, config.erp_retry_limit)
    runtime.workers["erp-push"] = lambda: run_push_worker(
        uow, connector, backoff, config.erp_push_interval_s, config.erp_claim_lease_s)
    # The upload's multipart framing and form fields come on top of the file itself.
    upload_limit = config.import_max_bytes + api.UPLOAD_OVERHEAD_BYTES
    app = runtime.app(routers=[api.router, api.records_router, api.conflicts_router,
                               api.outbound_router, dead_letters_router(NAME)], uow=uow,
                      permissions=permissions.PERMISSIONS, published=publishers.PUBLISHED,
                      body_limits={"/imports": upload_limit})
    app.state.ownership = ownership
    app.state.connector = connector.name
    return runtime, app


def main() -> None:
    """Run the erp_adapter service until SIGINT/SIGTERM."""
    try:
        Runtime.main(build)
    except OwnershipError as exc:
        raise SystemExit("erp_adapter not started: the ownership registry is not usable:\n  "
                         + "\n  ".join(exc.problems)) from None


if __name__ == "__main__":
    main()
