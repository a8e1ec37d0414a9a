"""The permissions matrix refuses to describe routes that do not exist, or to leave one out."""

from __future__ import annotations

import pytest
from fastapi import APIRouter, FastAPI

from services.dispatch.domain import WORKFLOW as DISPATCH_WORKFLOW
from services.dispatch.permissions import PERMISSIONS as DISPATCH
from services.order.domain import WORKFLOW as ORDER_WORKFLOW
from services.order.permissions import PERMISSIONS as ORDER
from shared.tokens import ROLES
from shared.web.permissions import MatrixMismatch, Permissions, documented_routes

router = APIRouter(prefix="/widgets")


@router.get("")
async def list_widgets() -> list[str]:
    return []


@router.post("/{widget_id}/polish")
async def polish(widget_id: str) -> str:
    return widget_id


def app() -> FastAPI:
    found = FastAPI()
    found.include_router(router)
    return found


def test_a_matrix_naming_every_route_covers_the_app() -> None:
    Permissions("w", {("GET", "/widgets"): frozenset(ROLES),
                      ("POST", "/widgets/{widget_id}/polish"): frozenset({"warehouse"})}
                ).check_covers(router.routes, documented_routes(app().openapi()))


def test_a_route_left_out_of_the_matrix_is_refused() -> None:
    with pytest.raises(MatrixMismatch, match=r"without a permissions entry: \['POST /widgets/"):
        Permissions("w", {("GET", "/widgets"): frozenset(ROLES)}).check_covers(router.routes)


def test_a_route_added_to_the_app_outside_the_services_routers_is_refused() -> None:
    served = app()

    @served.delete("/everything")
    async def delete_everything() -> None:
        return None

    matrix = Permissions("w", {("GET", "/widgets"): frozenset(ROLES),
                               ("POST", "/widgets/{widget_id}/polish"): frozenset({"warehouse"})})
    with pytest.raises(MatrixMismatch, match=r"\['DELETE /everything'\]"):
        matrix.check_covers(router.routes, documented_routes(served.openapi()))


def test_an_entry_for_a_route_the_app_does_not_serve_is_refused() -> None:
    matrix = Permissions("w", {("GET", "/widgets"): frozenset(ROLES),
                               ("POST", "/widgets/{widget_id}/polish"): frozenset(ROLES),
                               ("GET", "/gadgets"): frozenset(ROLES)})
    with pytest.raises(MatrixMismatch, match=r"does not serve: \['GET /gadgets'\]"):
        matrix.check_covers(router.routes)


def test_a_matrix_naming_a_role_that_does_not_exist_is_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown roles \['system'\]"):
        Permissions("w", {("GET", "/widgets"): frozenset({"system"})})


def test_the_order_routes_admit_exactly_the_roles_of_the_order_workflow_edges() -> None:
    for target, route in (("received", "/orders"), ("confirmed", "/orders/{order_id}/confirm"),
                          ("cancelled", "/orders/{order_id}/cancel")):
        table = {r for rule in ORDER_WORKFLOW.rules.values() if rule.target == target
                 for r in rule.roles if r in ROLES}
        assert ORDER.allowed("POST", route) == table


def test_the_transitions_route_admits_every_mover_of_the_dispatch_workflow_but_not_ops() -> None:
    movers = {r for rule in DISPATCH_WORKFLOW.rules.values() for r in rule.roles if r in ROLES}
    allowed = DISPATCH.allowed("POST", "/dispatches/{dispatch_id}/transitions")
    assert movers <= allowed
    assert "ops" not in allowed
