"""Every service's routes refuse what the database cannot hold and fields nobody asked for.

The routers run on a bare app with the shared problem responses and a fake unit of work: a
refusal at the door must come before any read or write, so no database is needed to see it.
"""

from __future__ import annotations

import secrets
import uuid
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI

from services.dispatch import api as dispatch_api
from services.dispatch.domain import Dispatch, OrderSnapshot
from services.erp_adapter import api as erp_api
from services.notification import api as notification_api
from services.order import api as order_api
from shared.tokens import JwtVerifier
from shared.web.problems import PROBLEM_JSON, install_problem_responses
from tests.unit.dispatch.fakes import fake_unit_of_work

VERIFIER = JwtVerifier(secrets.token_hex(32))
ROUTERS = {"order": order_api.router, "dispatch": dispatch_api.router,
           "erp_adapter": erp_api.router, "notification": notification_api.router}
HUGE = "100000000000000000000"  # beyond 64 bits


def token(*roles: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {VERIFIER.issue('u-9', list(roles))}"}


def app_of(router: APIRouter, uow: Any = None) -> FastAPI:
    app = FastAPI()
    install_problem_responses(app)
    app.include_router(router)
    app.state.jwt = VERIFIER
    app.state.uow = uow
    # An engine nobody may use: a refused request never gets as far as reading.
    app.state.runtime = SimpleNamespace(engine=None, settings=None)
    return app


async def call(app: FastAPI, method: str, path: str, **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.request(method, path, **kwargs)


@pytest.mark.parametrize(("service", "path", "query", "problem"), [
    ("order", "/orders", {"offset": HUGE}, "query.offset: Input should be less than or equal"),
    ("order", "/orders", {"customer_id": "a\x00b"}, "query.customer_id: must not contain"),
    ("dispatch", "/dispatches", {"offset": HUGE}, "query.offset: Input should be less"),
    ("dispatch", "/dispatches", {"order_id": "a\x00b"}, "query.order_id: must not contain"),
    ("dispatch", "/dispatches", {"limit": "0"}, "query.limit: Input should be greater"),
    ("erp_adapter", "/imports", {"offset": HUGE}, "query.offset: Input should be less"),
    ("erp_adapter", "/integration-log", {"kind": "a\x00b"}, "query.kind: must not contain"),
    ("erp_adapter", "/integration-log", {"outcome": "a\x00b"}, "query.outcome: must not"),
    ("erp_adapter", "/integration-log", {"before_id": HUGE}, "query.before_id: Input should"),
    ("erp_adapter", "/integration-log", {"limit": "1001"}, "query.limit: Input should be less"),
    ("notification", "/events", {"type": "a\x00b"}, "query.type: must not contain"),
    ("notification", "/events", {"aggregate_id": "x" * 201}, "query.aggregate_id: String"),
])
async def test_a_parameter_the_database_cannot_hold_is_a_422_naming_it(
    service: str, path: str, query: dict[str, str], problem: str,
) -> None:
    roles = ("integration",) if service == "erp_adapter" else ("ops",)
    response = await call(app_of(ROUTERS[service]), "GET", path, params=query,
                          headers=token(*roles))

    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    assert [p for p in response.json()["problems"] if p.startswith(problem)], response.json()


# Header values travel as latin-1: '²' passes str.isdigit() and fails int().
@pytest.mark.parametrize("if_match", ['"²"'.encode("latin-1"), b'"99999999999999999999"', b'"1.5"'])
async def test_an_if_match_that_is_no_storable_version_is_a_400(if_match: bytes) -> None:
    uow, store = fake_unit_of_work()
    response = await call(app_of(dispatch_api.router, uow), "POST",
                          f"/dispatches/{uuid.uuid4()}/transitions", json={"to": "released"},
                          headers={**token("planner"), "If-Match": if_match})

    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    assert uow.commits == 0


def pending_dispatch(order_id: str) -> tuple[Any, Any, Dispatch]:
    """A fake unit of work whose store holds one pending dispatch for `order_id`."""
    uow, store = fake_unit_of_work()
    dispatch = Dispatch.open_for(OrderSnapshot(
        order_id=order_id, external_ref=None, source=None, customer_id="C-1",
        requested_ship_date="2026-12-24", priority="normal",
        ship_to={"name": "n", "street": "s", "city": "c", "postal_code": "1", "country": "AT"},
        lines=[{"line_no": 1, "product_id": "P-1", "quantity": "1", "uom": "EA"}],
    ), dispatch_id=str(uuid.uuid4()), correlation_id=uuid.uuid4())
    store.stage(dispatch.id, dispatch)
    store.commit()
    return uow, store, dispatch


async def test_a_transition_with_an_unknown_field_is_a_422_and_changes_nothing() -> None:
    uow, store, dispatch = pending_dispatch("o-1")

    response = await call(app_of(dispatch_api.router, uow), "POST",
                          f"/dispatches/{dispatch.id}/transitions",
                          json={"to": "released", "urgent": True},
                          headers={**token("planner"), "If-Match": f'"{dispatch.version}"'})

    assert response.status_code == 422, response.text
    assert response.json()["problems"] == ["urgent: Extra inputs are not permitted"]
    assert uow.commits == 0 and store.read(dispatch.id).status == dispatch.status


async def test_transition_evidence_with_an_unknown_key_is_a_422_naming_it_and_changes_nothing() -> None:
    uow, store, dispatch = pending_dispatch("o-2")

    response = await call(app_of(dispatch_api.router, uow), "POST",
                          f"/dispatches/{dispatch.id}/transitions",
                          json={"to": "released", "evidence": {"approved_by": "u-1"}},
                          headers={**token("planner"), "If-Match": f'"{dispatch.version}"'})

    assert response.status_code == 422, response.text
    assert response.json()["problems"] == [
        "evidence.approved_by is unknown for pending → released: it takes no evidence"]
    assert uow.commits == 0 and store.read(dispatch.id).status == dispatch.status
