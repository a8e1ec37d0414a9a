"""Every cell of every service's permissions matrix, called in-process against real databases.

The cases are generated from `services/<name>/permissions.py`: for each route × role, a token
of that role calls the route. An allowed cell is not answered 401/403; a refused cell is
answered 403 and no table of the service (audit_log and outbox included) gains or loses a
row; a call without a token, or with a bad one, is answered 401 and writes nothing. Each
service is built once per module by its own `build(settings)` on fresh databases, with its
lifespan (broker and relay) running.

Where a refused caller would otherwise succeed, the request is one the route would carry out:
`ops` returning a dispatch from hold names a hold `ops` owns, which the workflow itself allows.
Only the matrix stands between that request and a write.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from services.dispatch import main as dispatch_main
from services.dispatch.domain import OrderSnapshot, Status
from services.dispatch.handlers import CreateDispatch, TransitionDispatch
from services.dispatch.handlers import handle as handle_dispatch
from services.dispatch.permissions import PERMISSIONS as DISPATCH
from services.erp_adapter import main as erp_main
from services.erp_adapter.permissions import PERMISSIONS as ERP
from services.notification import main as notification_main
from services.notification.permissions import PERMISSIONS as NOTIFICATION
from services.order import main as order_main
from services.order.permissions import PERMISSIONS as ORDER
from shared.db.engine import asyncpg_dsn
from shared.db.migrate import drop_database, ensure_database, upgrade
from shared.messaging.topology import consumer_queues, delete_broker_objects
from shared.runtime import Runtime
from shared.tokens import ROLES, JwtVerifier
from shared.web.dead_letters import PERMISSIONS as DEAD_LETTER_ROUTES
from shared.web.permissions import PUBLIC_PATHS, MatrixMismatch, Permissions
from tests.conftest import Servers

pytestmark = pytest.mark.integration

MATRICES: dict[str, Permissions] = {m.service: m for m in (ORDER, DISPATCH, NOTIFICATION, ERP)}
BUILDERS: dict[str, Callable[[Any], tuple[Runtime, FastAPI]]] = {
    "order": order_main.build, "dispatch": dispatch_main.build,
    "notification": notification_main.build, "erp_adapter": erp_main.build,
}
SECRET = secrets.token_hex(32)
TOKENS = JwtVerifier(SECRET)
SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "erp"
SHIP_TO = {"name": "Nordwerk GmbH", "street": "Hafenstr. 1", "city": "Bremen",
           "postal_code": "28195", "country": "DE"}


# ------------------------------------------------------------------------------ harness


@dataclass
class Service:
    """One service built by its own `build()`, running, with a client and a look at its tables."""

    name: str
    runtime: Runtime
    app: FastAPI
    http: httpx.AsyncClient
    db: asyncpg.Connection

    async def counts(self) -> dict[str, int]:
        """Rows in every table of the service's database."""
        tables = await self.db.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")
        return {t["tablename"]: await self.db.fetchval(f'SELECT count(*) FROM "{t["tablename"]}"')
                for t in tables}


@dataclass
class Services:
    """Each service started on first use and kept for the module; stopped and removed after."""

    servers: Servers
    namespace: str = field(default_factory=lambda: f"authz_{uuid.uuid4().hex[:8]}")
    running: dict[str, Service] = field(default_factory=dict)
    stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    async def get(self, name: str) -> Service:
        if name not in self.running:
            self.running[name] = await self.stack.enter_async_context(self._run(name))
        return self.running[name]

    @contextlib.asynccontextmanager
    async def _run(self, name: str) -> AsyncIterator[Service]:
        build = BUILDERS[name]
        # A namespace each: the notification service would otherwise observe (and write down)
        # the events the others' relays publish while a refused call is being counted.
        settings = _settings(name, self.servers, f"{self.namespace}_{name}")
        await ensure_database(settings.pg_url, settings.database_name)
        runtime = None
        try:
            await asyncio.to_thread(upgrade, name, settings.database_url)
            runtime, app = build(settings)
            db = await asyncpg.connect(asyncpg_dsn(settings.database_url))
            try:
                async with app.router.lifespan_context(app), httpx.AsyncClient(
                    transport=httpx.ASGITransport(app), base_url=f"http://{name}"
                ) as http:
                    yield Service(name, runtime, app, http, db)
            finally:
                await db.close()
        finally:
            queues = [] if runtime is None else [
                q for sub in runtime.broker.subscribers
                for q in (sub.queue.name, runtime.topology.dead_letter_queue(sub.queue.name).name)
            ]
            await delete_broker_objects(self.servers.amqp_url, queues, [])
            await drop_database(settings.pg_url, settings.database_name)

    async def close(self) -> None:
        await self.stack.aclose()
        await delete_broker_objects(self.servers.amqp_url, [], [
            f"{self.namespace}_{name}.{kind}" for name in self.running for kind in ("events", "dlx")
        ])


def _settings(name: str, servers: Servers, namespace: str) -> Any:
    from services.dispatch.config import Settings as DispatchSettings
    from services.erp_adapter.config import Settings as ErpSettings
    from services.notification.config import Settings as NotificationSettings
    from services.order.config import Settings as OrderSettings

    settings_class = {"order": OrderSettings, "dispatch": DispatchSettings,
                      "notification": NotificationSettings, "erp_adapter": ErpSettings}[name]
    return settings_class(_env_file=None, pg_url=servers.pg_url, amqp_url=servers.amqp_url,
                          db_prefix=namespace, namespace=namespace, jwt_secret=SECRET)


@pytest.fixture(scope="module")
async def services(servers: Servers) -> AsyncIterator[Services]:
    running = Services(servers)
    try:
        yield running
    finally:
        await running.close()


# ------------------------------------------------------------------------------ the requests


@dataclass(frozen=True)
class Call:
    method: str
    url: str
    kwargs: dict[str, Any] = field(default_factory=dict)


# (service, method, path) → what a caller of `role` sends; it may prepare rows first (they are
# written before the counts are taken).
Prepare = Callable[[Service, str], Awaitable[Call]]


def _fixed(method: str, url: str, **kwargs: Any) -> Prepare:
    async def prepare(_: Service, __: str) -> Call:
        return Call(method, url, kwargs)
    return prepare


def _some_id() -> str:
    return str(uuid.uuid4())


def _order_body() -> dict[str, Any]:
    return {"customer_id": "C-1", "requested_ship_date": "2026-12-24", "ship_to": SHIP_TO,
            "lines": [{"line_no": 1, "product_id": "P-1", "quantity": "2", "uom": "EA"}]}


async def _held_dispatch_owned_by(svc: Service, role: str) -> Call:
    """A dispatch a planner put on hold naming the caller as owner: the owner may return it."""
    uow = svc.app.state.uow
    order_id = f"o-{uuid.uuid4().hex[:8]}"
    dispatch_id = await handle_dispatch(CreateDispatch(
        event_id=_some_id(), consumer="test.authorisation-matrix", correlation_id=uuid.uuid4(),
        order=OrderSnapshot(order_id=order_id, external_ref=None, source=None, customer_id="C-1",
                            requested_ship_date=date(2026, 12, 24), priority="normal", ship_to=SHIP_TO,
                            lines=[{"line_no": 1, "product_id": "P-1", "quantity": "2",
                                    "uom": "EA"}]),
    ), uow)
    await handle_dispatch(TransitionDispatch(
        dispatch_id=uuid.UUID(dispatch_id), to=Status.ON_HOLD, expected_version=1,
        actor_id="u-planner", roles=frozenset({"planner"}), reason="stock check",
        evidence={"reason_code": "stock_shortage", "owner": f"u-{role}",
                  "due_at": "2026-12-20T12:00:00Z"},
    ), uow)
    return Call("POST", f"/dispatches/{dispatch_id}/transitions",
                {"json": {"to": "pending"}, "headers": {"If-Match": '"2"'}})


async def _customers_import(_: Service, __: str) -> Call:
    content = (SAMPLES / "customers.csv").read_bytes()
    return Call("POST", "/imports", {"files": {"file": ("customers.csv", content, "text/csv")}})


def _dead_letter_queue_of(svc: Service) -> str:
    """A queue the service consumes (its dead letters are what the routes operate on)."""
    queues = consumer_queues(svc.runtime.topology, svc.name)
    return queues[0].name if queues else f"{svc.runtime.topology.namespace}.none"


def _dead_letters(method: str, path: str) -> Prepare:
    async def prepare(svc: Service, _: str) -> Call:
        queue = _dead_letter_queue_of(svc)
        url = path.format(queue=queue, message_id="m-none")
        kwargs: dict[str, Any] = {}
        if method == "POST":
            kwargs["json"] = {"all": True}
        if method == "DELETE":
            kwargs["params"] = {"confirm": queue}
        return Call(method, url, kwargs)
    return prepare


DEAD_LETTER_REQUESTS: dict[tuple[str, str, str], Prepare] = {
    (service, method, path): _dead_letters(method, path)
    for service in ("order", "dispatch", "notification", "erp_adapter")
    for method, path in DEAD_LETTER_ROUTES
}

REQUESTS: dict[tuple[str, str, str], Prepare] = {
    **DEAD_LETTER_REQUESTS,
    ("order", "POST", "/orders"): _fixed("POST", "/orders", json=_order_body()),
    ("order", "POST", "/orders/{order_id}/confirm"):
        _fixed("POST", f"/orders/{_some_id()}/confirm"),
    ("order", "POST", "/orders/{order_id}/cancel"):
        _fixed("POST", f"/orders/{_some_id()}/cancel", json={"reason": "customer withdrew"}),
    ("order", "GET", "/orders"): _fixed("GET", "/orders"),
    ("order", "GET", "/orders/{order_id}"): _fixed("GET", f"/orders/{_some_id()}"),
    ("order", "GET", "/orders/{order_id}/history"): _fixed("GET", f"/orders/{_some_id()}/history"),
    ("dispatch", "GET", "/dispatches"): _fixed("GET", "/dispatches"),
    ("dispatch", "GET", "/dispatches/{dispatch_id}"): _fixed("GET", f"/dispatches/{_some_id()}"),
    ("dispatch", "POST", "/dispatches/{dispatch_id}/transitions"): _held_dispatch_owned_by,
    ("dispatch", "GET", "/dispatches/{dispatch_id}/history"):
        _fixed("GET", f"/dispatches/{_some_id()}/history"),
    ("notification", "GET", "/events"): _fixed("GET", "/events"),
    ("erp_adapter", "POST", "/imports"): _customers_import,
    ("erp_adapter", "GET", "/imports"): _fixed("GET", "/imports"),
    ("erp_adapter", "GET", "/imports/{run_id}"): _fixed("GET", f"/imports/{_some_id()}"),
    ("erp_adapter", "GET", "/integration-log"): _fixed("GET", "/integration-log"),
}

CELLS = [(service, method, path, role, allowed)
         for service, matrix in MATRICES.items()
         for method, path, role, allowed in matrix.cells()]
ROUTES = [(service, method, path) for service, matrix in MATRICES.items()
          for method, path in sorted(matrix.routes)]


def _id(cell: tuple[Any, ...]) -> str:
    return " ".join(str(part) for part in cell[:4])


def token(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS.issue(f'u-{role}', [role])}"}


async def call(svc: Service, prepared: Call, headers: dict[str, str]) -> httpx.Response:
    kwargs = dict(prepared.kwargs)
    kwargs["headers"] = {**kwargs.get("headers", {}), **headers}
    return await svc.http.request(prepared.method, prepared.url, **kwargs)


# ------------------------------------------------------------------------------ the tests


def test_every_route_in_every_matrix_has_a_request_here_and_every_role_a_column() -> None:
    assert set(REQUESTS) == set(ROUTES)
    assert {role for *_, role, _ in CELLS} == set(ROLES)
    assert len(CELLS) == len(ROUTES) * len(ROLES)


@pytest.mark.parametrize("cell", [c for c in CELLS if c[4]], ids=_id)
async def test_a_role_the_matrix_allows_is_not_refused(
    services: Services, cell: tuple[str, str, str, str, bool],
) -> None:
    service, method, path, role, _ = cell
    svc = await services.get(service)
    prepared = await REQUESTS[service, method, path](svc, role)
    response = await call(svc, prepared, token(role))
    assert response.status_code not in (401, 403), response.text
    assert response.status_code < 500, response.text


@pytest.mark.parametrize("cell", [c for c in CELLS if not c[4]], ids=_id)
async def test_a_role_the_matrix_refuses_gets_403_and_nothing_is_written(
    services: Services, cell: tuple[str, str, str, str, bool],
) -> None:
    service, method, path, role, _ = cell
    svc = await services.get(service)
    prepared = await REQUESTS[service, method, path](svc, role)
    before = await svc.counts()
    response = await call(svc, prepared, token(role))
    assert response.status_code == 403, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert f"{method} {path} needs one of the roles" in response.json()["detail"]
    assert await svc.counts() == before


@pytest.mark.parametrize("route", ROUTES, ids=" ".join)
@pytest.mark.parametrize("credentials", [
    None, "Bearer not-a-jwt", "Basic dXNlcjpwYXNz",
    f"Bearer {JwtVerifier('x' * 64).issue('u-ops', list(ROLES))}",
], ids=["no token", "garbage", "basic auth", "someone else's secret"])
async def test_a_call_without_a_valid_token_gets_401_and_nothing_is_written(
    services: Services, route: tuple[str, str, str], credentials: str | None,
) -> None:
    service, method, path = route
    svc = await services.get(service)
    prepared = await REQUESTS[route](svc, "supervisor")
    before = await svc.counts()
    response = await call(svc, prepared, {} if credentials is None else
                          {"Authorization": credentials})
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert await svc.counts() == before


@pytest.mark.parametrize("service", sorted(MATRICES))
async def test_the_ops_routes_stay_public(services: Services, service: str) -> None:
    svc = await services.get(service)
    for path in sorted(PUBLIC_PATHS):
        response = await svc.http.get(path)
        assert response.status_code == 200, (path, response.text)


@pytest.mark.parametrize("route", ROUTES, ids=" ".join)
def test_a_service_whose_matrix_lacks_one_of_its_routes_refuses_to_be_built(
    monkeypatch: pytest.MonkeyPatch, servers: Servers, route: tuple[str, str, str],
) -> None:
    service, method, path = route
    matrix = MATRICES[service]
    lacking = Permissions(service, {r: roles for r, roles in matrix.routes.items()
                                    if r != (method, path)})
    module = importlib.import_module(f"services.{service}.permissions")
    monkeypatch.setattr(module, "PERMISSIONS", lacking)
    with pytest.raises(MatrixMismatch, match=f"without a permissions entry: \\['{method} {path}'\\]"):
        BUILDERS[service](_settings(service, servers, "authz_unbuilt"))
