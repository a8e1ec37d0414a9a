"""Every cell of every service's permissions matrix, called in-process against real databases.

The cases are generated from `services/<name>/permissions.py`: for each route × role, a token
of that role calls the route. An allowed cell is not answered 401/403; a refused cell is
answered 403 and no table of the service (audit_log and outbox included) gains or loses a
row; a call without a token, or with a bad one, is answered 401 and writes nothing. Each
service is built once per module by its own `build(settings)` on fresh databases, with its
lifespan (broker and relay) running.

Where a route's request depends on who asks, it is one the caller could carry out: an
exception acknowledged or resolved names the caller as its owner, an approval was asked for by
someone else. Refused cells are checked to be refused by the matrix itself (its message), before
the domain's own checks are reached.
"""

from __future__ import annotations

import contextlib
import importlib
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from services.dispatch import main as dispatch_main
from services.dispatch.domain import OrderSnapshot, Status
from services.dispatch.handlers import CreateDispatch, OpenException, TransitionDispatch
from services.dispatch.handlers import handle as handle_dispatch
from services.dispatch.permissions import PERMISSIONS as DISPATCH
from services.erp_adapter import main as erp_main
from services.erp_adapter.permissions import PERMISSIONS as ERP
from services.notification import main as notification_main
from services.notification.permissions import PERMISSIONS as NOTIFICATION
from services.order import main as order_main
from services.order.permissions import PERMISSIONS as ORDER
from shared.messaging.topology import consumer_queues, delete_broker_objects
from shared.runtime import Runtime
from shared.tokens import ROLES, JwtVerifier
from shared.web.dead_letters import PERMISSIONS as DEAD_LETTER_ROUTES
from shared.web.permissions import PUBLIC_PATHS, MatrixMismatch, Permissions
from tests.conftest import Servers, service_database

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
        prefix = f"{self.namespace}_{name}"
        runtime = None
        try:
            async with service_database(self.servers.pg_url, name, prefix) as password:
                settings = _settings(name, self.servers, prefix, password)
                runtime, app = build(settings)
                db = await asyncpg.connect(f"{self.servers.pg_url}/{settings.database_name}")
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

    async def close(self) -> None:
        await self.stack.aclose()
        await delete_broker_objects(self.servers.amqp_url, [], [
            f"{self.namespace}_{name}.{kind}" for name in self.running for kind in ("events", "dlx")
        ])


def _settings(name: str, servers: Servers, namespace: str, db_password: str) -> Any:
    from services.dispatch.config import Settings as DispatchSettings
    from services.erp_adapter.config import Settings as ErpSettings
    from services.notification.config import Settings as NotificationSettings
    from services.order.config import Settings as OrderSettings

    settings_class = {"order": OrderSettings, "dispatch": DispatchSettings,
                      "notification": NotificationSettings, "erp_adapter": ErpSettings}[name]
    return settings_class(_env_file=None, pg_url=servers.pg_url, amqp_url=servers.amqp_url,
                          db_prefix=namespace, namespace=namespace, jwt_secret=SECRET,
                          db_password=db_password)


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


async def _new_dispatch(svc: Service, *walk: tuple[Status, str, dict[str, Any]]) -> str:
    """A dispatch moved along `walk` (target, role, evidence) by the workflow's own roles."""
    uow = svc.app.state.uow
    dispatch_id: str = await handle_dispatch(CreateDispatch(
        event_id=_some_id(), consumer="test.authorisation-matrix", correlation_id=uuid.uuid4(),
        order=OrderSnapshot(order_id=f"o-{uuid.uuid4().hex[:8]}", external_ref=None, source=None,
                            customer_id="C-1", requested_ship_date=date(2026, 12, 24),
                            priority="normal", ship_to=SHIP_TO,
                            lines=[{"line_no": 1, "product_id": "P-1", "quantity": "2",
                                    "uom": "EA"}]),
    ), uow)
    for version, (target, role, evidence) in enumerate(walk, start=1):
        await handle_dispatch(TransitionDispatch(
            dispatch_id=uuid.UUID(dispatch_id), to=target, expected_version=version,
            actor_id=f"u-{role}", roles=frozenset({role}), evidence=evidence), uow)
    return dispatch_id


PICKING = ((Status.RELEASED, "planner", {}), (Status.PICKING, "warehouse", {}))
SHIPPED = (*PICKING, (Status.PACKED, "warehouse", {"lines": [{"line_no": 1, "quantity": "2"}]}),
           (Status.SHIPPED, "shipping", {"carrier": "DHL", "tracking_number": "T-1"}))


def _due() -> str:
    return (datetime.now(UTC) + timedelta(days=1)).isoformat()


async def _exception_opened_by(svc: Service, role: str) -> Call:
    """Opening an exception the caller could own."""
    dispatch_id = await _new_dispatch(svc)
    return Call("POST", f"/dispatches/{dispatch_id}/exceptions", {"json": {
        "reason_code": "damaged_goods", "owner": f"u-{role}", "due_at": _due(),
        "blocking": True}})


async def _exception_owned_by(svc: Service, role: str) -> str:
    """An exception a planner opened naming the caller as owner: the owner may act on it."""
    dispatch_id = await _new_dispatch(svc)
    change = await handle_dispatch(OpenException(
        dispatch_id=uuid.UUID(dispatch_id), actor_id="u-planner", roles=frozenset({"planner"}),
        reason_code="stock_shortage", owner=f"u-{role}",
        due_at=datetime.now(UTC) + timedelta(days=1), blocking=True), svc.app.state.uow)
    return str(change.exception.id)


async def _acknowledge(svc: Service, role: str) -> Call:
    return Call("POST", f"/exceptions/{await _exception_owned_by(svc, role)}/acknowledge")


async def _resolve(svc: Service, role: str) -> Call:
    return Call("POST", f"/exceptions/{await _exception_owned_by(svc, role)}/resolve",
                {"json": {"resolution": "sorted"}})


async def _correction(svc: Service, _: str) -> Call:
    dispatch_id = await _new_dispatch(svc, *SHIPPED)
    return Call("POST", f"/dispatches/{dispatch_id}/corrections", {"json": {
        "changes": [{"field": "carrier", "to": "UPS"}], "reason": "booked with UPS"}})


async def _approval_asked_by_someone_else(svc: Service) -> str:
    """A cancel after picking began, asked for by another supervisor."""
    dispatch_id = await _new_dispatch(svc, *PICKING)
    moved = await handle_dispatch(TransitionDispatch(
        dispatch_id=uuid.UUID(dispatch_id), to=Status.CANCELLED, expected_version=3,
        actor_id="u-other-supervisor", roles=frozenset({"supervisor"}),
        reason="customer withdrew"), svc.app.state.uow)
    return str(moved.approval.id)


async def _approve(svc: Service, _: str) -> Call:
    return Call("POST", f"/approvals/{await _approval_asked_by_someone_else(svc)}/approve",
                {"json": {"comment": "ok"}})


async def _reject(svc: Service, _: str) -> Call:
    return Call("POST", f"/approvals/{await _approval_asked_by_someone_else(svc)}/reject",
                {"json": {"reason": "no"}})


async def _hold_request(svc: Service, role: str) -> Call:
    """Putting a pending dispatch on hold with an exception the caller owns."""
    dispatch_id = await _new_dispatch(svc)
    return Call("POST", f"/dispatches/{dispatch_id}/transitions", {
        "json": {"to": "on_hold", "reason": "stock check", "evidence": {
            "reason_code": "stock_shortage", "owner": f"u-{role}", "due_at": _due()}},
        "headers": {"If-Match": '"1"'}})


async def _customers_import(_: Service, __: str) -> Call:
    content = (SAMPLES / "customers.csv").read_bytes()
    return Call("POST", "/imports", {"files": {"file": ("customers.csv", content, "text/csv")}})


async def _people_import(_: Service, __: str) -> Call:
    content = b"id,name,roles,email\nu-matrix,Matrix Person,sales,matrix@plant.example\n"
    return Call("POST", "/people/imports", {"files": {"file": ("people.csv", content, "text/csv")}})


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
    ("order", "GET", "/timeline"): _fixed("GET", "/timeline", params={"order_id": _some_id()}),
    ("dispatch", "GET", "/dispatches"): _fixed("GET", "/dispatches"),
    ("dispatch", "GET", "/dispatches/{dispatch_id}"): _fixed("GET", f"/dispatches/{_some_id()}"),
    ("dispatch", "POST", "/dispatches/{dispatch_id}/transitions"): _hold_request,
    ("dispatch", "GET", "/dispatches/{dispatch_id}/history"):
        _fixed("GET", f"/dispatches/{_some_id()}/history"),
    ("dispatch", "POST", "/dispatches/{dispatch_id}/exceptions"): _exception_opened_by,
    ("dispatch", "POST", "/dispatches/{dispatch_id}/corrections"): _correction,
    ("dispatch", "GET", "/exceptions"): _fixed("GET", "/exceptions"),
    ("dispatch", "GET", "/timeline"): _fixed("GET", "/timeline", params={"order_id": "o-1"}),
    ("dispatch", "GET", "/exceptions/{exception_id}"): _fixed("GET", f"/exceptions/{_some_id()}"),
    ("dispatch", "POST", "/exceptions/{exception_id}/acknowledge"): _acknowledge,
    ("dispatch", "POST", "/exceptions/{exception_id}/resolve"): _resolve,
    ("dispatch", "GET", "/approvals"): _fixed("GET", "/approvals"),
    ("dispatch", "GET", "/approvals/{approval_id}"): _fixed("GET", f"/approvals/{_some_id()}"),
    ("dispatch", "POST", "/approvals/{approval_id}/approve"): _approve,
    ("dispatch", "POST", "/approvals/{approval_id}/reject"): _reject,
    ("notification", "GET", "/events"): _fixed("GET", "/events"),
    ("notification", "GET", "/rules"): _fixed("GET", "/rules"),
    ("notification", "GET", "/deliveries"): _fixed("GET", "/deliveries"),
    ("notification", "GET", "/timeline"): _fixed("GET", "/timeline", params={"order_id": "o-1"}),
    ("notification", "GET", "/inbox"): _fixed("GET", "/inbox"),
    ("notification", "POST", "/inbox/{delivery_id}/read"):
        _fixed("POST", f"/inbox/{_some_id()}/read"),
    ("notification", "POST", "/deliveries/{delivery_id}/retry"):
        _fixed("POST", f"/deliveries/{_some_id()}/retry"),
    ("notification", "GET", "/people"): _fixed("GET", "/people"),
    ("notification", "POST", "/people/imports"): _people_import,
    ("erp_adapter", "POST", "/imports"): _customers_import,
    ("erp_adapter", "GET", "/imports"): _fixed("GET", "/imports"),
    ("erp_adapter", "GET", "/imports/{run_id}"): _fixed("GET", f"/imports/{_some_id()}"),
    ("erp_adapter", "GET", "/integration-log"): _fixed("GET", "/integration-log"),
    ("erp_adapter", "GET", "/ownership"): _fixed("GET", "/ownership"),
    ("erp_adapter", "POST", "/erp/records"): _fixed(
        "POST", "/erp/records", json={"entity": "order", "id": "o-1",
                                      "fields": {"status": "invoiced"}}),
    ("erp_adapter", "GET", "/conflicts"): _fixed("GET", "/conflicts"),
    ("erp_adapter", "GET", "/timeline"): _fixed("GET", "/timeline", params={"order_id": "o-1"}),
    ("erp_adapter", "GET", "/conflicts/{conflict_id}"): _fixed("GET", f"/conflicts/{_some_id()}"),
    ("erp_adapter", "POST", "/conflicts/{conflict_id}/resolve"): _fixed(
        "POST", f"/conflicts/{_some_id()}/resolve",
        json={"resolution": "keep_spine", "reason": "Spine is right"}),
    ("erp_adapter", "GET", "/connectors"): _fixed("GET", "/connectors"),
    ("erp_adapter", "PUT", "/connectors/{name}"): _fixed("PUT", "/connectors/file",
                                                         json={"mode": "approve"}),
    ("erp_adapter", "GET", "/confirmations"): _fixed("GET", "/confirmations"),
    ("erp_adapter", "GET", "/confirmations/{confirmation_id}"): _fixed(
        "GET", f"/confirmations/{_some_id()}"),
    ("erp_adapter", "POST", "/confirmations/{confirmation_id}/approve"): _fixed(
        "POST", f"/confirmations/{_some_id()}/approve"),
    ("erp_adapter", "POST", "/confirmations/{confirmation_id}/retry"): _fixed(
        "POST", f"/confirmations/{_some_id()}/retry"),
    ("erp_adapter", "GET", "/reconciliation"): _fixed("GET", "/reconciliation"),
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
        BUILDERS[service](_settings(service, servers, "authz_unbuilt", "unused"))
