"""HTTP edges of the order service: request → command → handler; no business rules here."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.order import handlers
from services.order.domain import (
    ExternalRefTaken,
    Forbidden,
    InvalidOrder,
    NotAllowedFromState,
    NotFound,
    OrderDraft,
    OrderError,
    OrderLine,
    ReasonRequired,
    StaleVersion,
    Status,
    person_roles_for_target,
)
from services.order.repository import SqlAlchemyOrderRepository, list_orders
from shared.audit import AuditEntry, history
from shared.auth import ROLES, Principal, require_roles
from shared.contracts import ext
from shared.uow import UnitOfWork

router = APIRouter(prefix="/orders", tags=["orders"])

# Who may do what comes from the domain's transition table, never from a second list here.
Reader = Annotated[Principal, Depends(require_roles(*ROLES))]
Creator = Annotated[Principal, Depends(require_roles(*person_roles_for_target(Status.RECEIVED)))]
Confirmer = Annotated[
    Principal, Depends(require_roles(*person_roles_for_target(Status.CONFIRMED)))
]
Canceller = Annotated[
    Principal, Depends(require_roles(*person_roles_for_target(Status.CANCELLED)))
]


class OrderIn(BaseModel):
    """An order typed in by a person: `ext.*.order.submitted` without `confirmed`."""

    # Unknown fields are refused so that e.g. `confirmed: true` is not silently ignored.
    model_config = ConfigDict(extra="forbid")

    external_ref: str | None = Field(
        default=None, min_length=1, max_length=100,
        description="your own reference (e.g. the customer's PO); unique among API orders",
    )
    customer_id: str = Field(min_length=1, max_length=64)
    requested_ship_date: date
    priority: Literal["normal", "rush"] = "normal"
    ship_to: ext.ShipTo
    lines: list[ext.OrderLine] = Field(min_length=1, max_length=500)

    @field_validator("lines")
    @classmethod
    def _line_numbers_unique(cls, lines: list[ext.OrderLine]) -> list[ext.OrderLine]:
        numbers = [line.line_no for line in lines]
        if len(numbers) != len(set(numbers)):
            raise ValueError("line_no must be unique within an order")
        return lines


class LineOut(BaseModel):
    line_no: int
    product_id: str
    quantity: str = Field(description="decimal string, exact")
    uom: str


class OrderOut(BaseModel):
    id: uuid.UUID
    status: Status
    version: int
    source: str | None
    external_ref: str | None
    customer_id: str
    requested_ship_date: date
    priority: str
    ship_to: dict[str, str]
    lines: list[LineOut]
    correlation_id: uuid.UUID
    created_by: str
    created_at: datetime
    updated_at: datetime


class CancelIn(BaseModel):
    reason: str = Field(min_length=1, max_length=2000)


def _uow(request: Request) -> UnitOfWork:
    return request.app.state.uow


IfMatch = Annotated[
    str | None,
    Header(description="the ETag (version) you read; the change is refused with 412 if stale"),
]


@router.post(
    "",
    status_code=201,
    response_model=OrderOut,
    summary="Create an order (honours Idempotency-Key)",
    responses={403: {}, 409: {}, 422: {}},
)
async def post_order(
    body: OrderIn,
    request: Request,
    principal: Creator,
    idempotency_key: Annotated[
        str | None,
        Header(min_length=1, max_length=200,
               description="retry-safe: the same key and body return the first response"),
    ] = None,
) -> JSONResponse:
    placed = await handlers.place_order(
        handlers.PlaceOrder(
            actor_id=principal.sub,
            roles=principal.roles,
            draft=OrderDraft(
                customer_id=body.customer_id,
                requested_ship_date=body.requested_ship_date,
                priority=body.priority,
                ship_to=body.ship_to.model_dump(),
                lines=[OrderLine(x.line_no, x.product_id, x.quantity, x.uom) for x in body.lines],
                external_ref=body.external_ref,
                source=None,
            ),
            request_hash=_request_hash(body),
            idempotency_key=idempotency_key,
        ),
        _uow(request),
    )
    headers = {
        "Location": f"{request.url.path.rstrip('/')}/{placed.body['id']}",
        "ETag": f'"{placed.body["version"]}"',
    }
    if idempotency_key is not None:
        headers["Idempotent-Replayed"] = "true" if placed.replayed else "false"
    return JSONResponse(placed.body, status_code=placed.status, headers=headers)


@router.post(
    "/{order_id}/confirm",
    response_model=OrderOut,
    summary="Confirm a received order",
    responses={403: {}, 404: {}, 409: {}, 412: {}},
)
async def post_confirm(
    order_id: uuid.UUID, request: Request, principal: Confirmer, if_match: IfMatch = None
) -> JSONResponse:
    order = await handlers.confirm_order(
        handlers.ConfirmOrder(
            order_id=order_id,
            actor_id=principal.sub,
            roles=principal.roles,
            expected_version=_parse_if_match(if_match),
        ),
        _uow(request),
    )
    return _order_response(handlers.order_view(order))


@router.post(
    "/{order_id}/cancel",
    response_model=OrderOut,
    summary="Cancel an order, with a reason",
    responses={403: {}, 404: {}, 409: {}, 412: {}, 422: {}},
)
async def post_cancel(
    order_id: uuid.UUID,
    body: CancelIn,
    request: Request,
    principal: Canceller,
    if_match: IfMatch = None,
) -> JSONResponse:
    order = await handlers.cancel_order(
        handlers.CancelOrder(
            order_id=order_id,
            actor_id=principal.sub,
            roles=principal.roles,
            reason=body.reason,
            expected_version=_parse_if_match(if_match),
        ),
        _uow(request),
    )
    return _order_response(handlers.order_view(order))


@router.get("/{order_id}", response_model=OrderOut, summary="One order with its lines (ETag)")
async def get_order(
    order_id: uuid.UUID, request: Request, response: Response, _: Reader
) -> dict[str, Any]:
    async with _uow(request).engine.connect() as conn:
        order = await SqlAlchemyOrderRepository(conn).get(order_id)
    if order is None:
        raise HTTPException(404, f"no order {order_id}")
    response.headers["ETag"] = f'"{order.version}"'
    return handlers.order_view(order)


@router.get("", response_model=list[OrderOut], summary="List orders, newest first")
async def get_orders(
    request: Request,
    _: Reader,
    status: Status | None = None,
    customer_id: str | None = None,
    source: str | None = None,
    external_ref: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[dict[str, Any]]:
    async with _uow(request).engine.connect() as conn:
        orders = await list_orders(
            conn,
            status=status.value if status else None,
            customer_id=customer_id,
            source=source,
            external_ref=external_ref,
            limit=limit,
            offset=offset,
        )
    return [handlers.order_view(o) for o in orders]


@router.get("/{order_id}/history", response_model=list[AuditEntry],
            summary="Every change of this order, oldest first, from the audit log")
async def get_history(order_id: uuid.UUID, request: Request, _: Reader) -> list[dict[str, Any]]:
    async with _uow(request).engine.connect() as conn:
        if await SqlAlchemyOrderRepository(conn).get(order_id) is None:
            raise HTTPException(404, f"no order {order_id}")
        return await history(conn, "order", str(order_id))


def _order_response(view: dict[str, Any]) -> JSONResponse:
    return JSONResponse(view, headers={"ETag": f'"{view["version"]}"'})


def _request_hash(body: OrderIn) -> str:
    """Fingerprint of what was asked, so a reused Idempotency-Key with other content is caught."""
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _parse_if_match(value: str | None) -> int | None:
    if value is None:
        return None
    text = value.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        raise HTTPException(400, f"If-Match {value!r} is not an order version")
    return int(text)


_STATUS_OF: list[tuple[type[OrderError], int]] = [
    (NotFound, 404),
    (Forbidden, 403),
    (StaleVersion, 412),
    (NotAllowedFromState, 409),
    (ExternalRefTaken, 409),
    (ReasonRequired, 422),
    (InvalidOrder, 422),
    (handlers.IdempotencyKeyReused, 422),
]


def install_domain_errors(app: FastAPI) -> None:
    """Map each domain refusal to its HTTP status; the transaction was rolled back already."""

    @app.exception_handler(OrderError)
    async def refused(_: Request, exc: OrderError) -> JSONResponse:
        code = next((c for kind, c in _STATUS_OF if isinstance(exc, kind)), 400)
        body: dict[str, Any] = {"detail": str(exc), "error": exc.__class__.__name__}
        if isinstance(exc, InvalidOrder):
            body["detail"] = f"the order cannot be accepted: {exc}"
            body["reasons"] = exc.reasons
        if isinstance(exc, ExternalRefTaken):
            body["order_id"] = exc.order_id
        return JSONResponse(body, status_code=code)
