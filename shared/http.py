"""HTTP plumbing every service mounts: health, readiness, metrics and readable errors."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.web.problems import install_problem_responses

HTTP_REQUESTS = Counter(
    "spine_http_requests_total", "HTTP requests", ["service", "method", "route", "status"]
)
HTTP_LATENCY = Histogram("spine_http_request_seconds", "HTTP request latency", ["service", "route"])

# A unit of work holds its transaction for milliseconds and the relay for one batch's publish:
# a session idle in a transaction for longer than this is stuck, and what it does is lost.
STUCK_AFTER_S = 10
_STUCK_SESSIONS = sa.text(
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
    "AND application_name = current_setting('application_name') "
    "AND state LIKE 'idle in transaction%' AND state_change < now() - make_interval(secs => :s)"
).bindparams(s=STUCK_AFTER_S)
IDLE_IN_TRANSACTION = Gauge(
    "spine_db_sessions_idle_in_transaction",
    f"This service's database sessions idle inside a transaction for over {STUCK_AFTER_S} s "
    "(work on them would never commit)",
)


def ops_router(
    engine: AsyncEngine, broker: Any, readiness: Callable[[], dict[str, str]] | None = None
) -> APIRouter:
    """`/healthz` (process alive), `/readyz` (database and broker reachable), `/metrics`.

    `readiness` adds the process's own checks (consumers started, no message held), each
    "ok" or what it waits for.
    """
    router = APIRouter(tags=["ops"])

    @router.get("/healthz", summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    async def stuck_sessions() -> int:
        async with engine.connect() as conn:
            stuck = int((await conn.execute(_STUCK_SESSIONS)).scalar_one())
        IDLE_IN_TRANSACTION.set(stuck)
        return stuck

    @router.get("/readyz", summary="The database and the broker answer, the consumers run, "
                "no session is stuck and no message is held",
                responses={503: {"description": "Not ready: `checks` names what failed"}})
    async def readyz() -> JSONResponse:
        checks: dict[str, str] = {}
        try:
            stuck = await stuck_sessions()
            checks["database"] = "ok" if not stuck else (
                f"{stuck} session(s) idle in a transaction for over {STUCK_AFTER_S} s"
            )
        except Exception as exc:
            checks["database"] = f"unreachable: {exc.__class__.__name__}"
        try:
            checks["broker"] = "ok" if await broker.ping(timeout=2.0) else "unreachable"
        except Exception as exc:
            checks["broker"] = f"unreachable: {exc.__class__.__name__}"
        if readiness is not None:
            checks.update(readiness())
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        with contextlib.suppress(Exception):  # unreachable: readyz says so; the gauge keeps its value
            await stuck_sessions()
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router


def install_error_handlers(app: FastAPI, service: str) -> None:
    """Every refusal answers as problem+json; every response is counted and timed."""
    install_problem_responses(app)

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        # Until the handler returns: a streamed body's transfer is the client's pace, not ours.
        elapsed = time.perf_counter() - started
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        HTTP_REQUESTS.labels(service, request.method, path, str(response.status_code)).inc()
        HTTP_LATENCY.labels(service, path).observe(elapsed)
        return response
