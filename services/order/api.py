"""HTTP edges of the order service: request → command → handler; no business rules here."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.order import views
from services.order.domain import Order, OrderDraft, OrderLine, Status, person_roles_for_target
from services.order.handlers import CancelOrder, ConfirmOrder, PlacedOrder, PlaceOrder, handle
from services.order.unit_of_work import OrderUnitOfWork
from shared.audit import AuditEntry, TimelineOut
from shared.auth import Principal, require_roles
from shared.contracts import ext
from shared.web import params
from shared.web.deps import EngineDep, IfMatchHeader, ReaderDep, parse_if_match, unit_of_work, with_etag
from shared.web.params import MAX_INT
from shared.web.problems import responses
from shared.web.rate_limit import within_rate

router = APIRouter(prefix="/orders", tags=["orders"])
# The order's part of the cross-service timeline; `/timeline` in every service, so no prefix.
timeline_router = APIRouter(tags=["timeline"])
UowDep = Annotated[OrderUnitOfWork, Depends(unit_of_work)]

# Who may do what comes from the domain's transition table, never from a second list here.
# Creating is the route that takes work in: each caller is held to its rate (SPINE_HTTP_RATE_LIMITS).
Creator = Annotated[
    Principal,
    Depends(within_rate(require_roles(*person_roles_for_target(Status.RECEIVED)))),
]
Confirmer = Annotated[
    Principal, Depends(require_roles(*person_roles_for_target(Status.CONFIRMED)))
]
Canceller = Annotated[
    Principal, Depends(require_roles(*person_roles_for_target(Status.CANCELLED)))
]


# The wire contracts tolerate unknown fields (a newer producer may add some); a person typing
# an order in gets told instead, at every depth, so that a misspelt field is never dropped.
class ShipToIn(ext.ShipTo):
    model_config = ConfigDict(extra="forbid")


class OrderLineIn(ext.OrderLine):
    model_config = ConfigDict(extra="forbid")

    line_no: int = Field(ge=1, le=MAX_INT)


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
    ship_to: ShipToIn
    lines: list[OrderLineIn] = Field(min_length=1, max_length=500)

    @field_validator("lines")
    @classmethod
    def _line_numbers_unique(cls, lines: list[OrderLineIn]) -> list[OrderLineIn]:
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
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=2000)


@router.post(
    "",
    status_code=views.CREATED,
    response_model=OrderOut,
    summary="Create an order (honours Idempotency-Key)",
    responses=responses(400, 401, 403, 409, 413, 422, 429),
)
async def post_order(
    body: OrderIn,
    request: Request,
    uow: UowDep,
    principal: Creator,
    idempotency_key: Annotated[
        str | None,
        Header(min_length=1, max_length=200,
               description="retry-safe: the same key and body return the first response"),
    ] = None,
) -> JSONResponse:
    placed: PlacedOrder = await handle(
        PlaceOrder(
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
        uow,
    )
    view = views.order_view(placed.order)
    headers = {"Location": f"{request.url.path.rstrip('/')}/{view['id']}",
               "ETag": f'"{view["version"]}"'}
    if idempotency_key is not None:
        headers["Idempotent-Replayed"] = "true" if placed.replayed else "false"
    return JSONResponse(view, status_code=views.CREATED, headers=headers)


@router.post(
    "/{order_id}/confirm",
    response_model=OrderOut,
    summary="Confirm a received order",
    responses=responses(400, 401, 403, 404, 409, 412, 422),
)
async def post_confirm(
    order_id: uuid.UUID, uow: UowDep, principal: Confirmer, if_match: IfMatchHeader = None
) -> JSONResponse:
    order: Order = await handle(
        ConfirmOrder(order_id=order_id, actor_id=principal.sub, roles=principal.roles,
                     expected_version=parse_if_match(if_match, required=False)),
        uow,
    )
    return _order_response(order)


@router.post(
    "/{order_id}/cancel",
    response_model=OrderOut,
    summary="Cancel an order, with a reason",
    responses=responses(400, 401, 403, 404, 409, 412, 413, 422),
)
async def post_cancel(
    order_id: uuid.UUID, body: CancelIn, uow: UowDep, principal: Canceller,
    if_match: IfMatchHeader = None,
) -> JSONResponse:
    order: Order = await handle(
        CancelOrder(order_id=order_id, actor_id=principal.sub, roles=principal.roles,
                    reason=body.reason, expected_version=parse_if_match(if_match, required=False)),
        uow,
    )
    return _order_response(order)


@router.get("/{order_id}", response_model=OrderOut, summary="One order with its lines (ETag)",
            responses=responses(401, 403, 404, 422))
async def get_order(
    order_id: uuid.UUID, engine: EngineDep, response: Response, _: ReaderDep
) -> dict[str, Any]:
    return with_etag(await views.one_order(engine, order_id), response, missing=f"no order {order_id}")


@router.get("", response_model=list[OrderOut], summary="List orders, newest first",
            responses=responses(401, 403, 422))
async def get_orders(
    engine: EngineDep,
    _: ReaderDep,
    status: Status | None = None,
    customer_id: Annotated[str | None, params.text()] = None,
    source: Annotated[str | None, params.text()] = None,
    external_ref: Annotated[str | None, params.text()] = None,
    limit: Annotated[int, params.limit(500)] = 50,
    offset: params.Offset = 0,
) -> list[dict[str, Any]]:
    return await views.list_orders(
        engine, status=status.value if status else None, customer_id=customer_id, source=source,
        external_ref=external_ref, limit=limit, offset=offset,
    )


@router.get("/{order_id}/history", response_model=list[AuditEntry],
            summary="Every change of this order, oldest first, from the audit log",
            responses=responses(401, 403, 404, 422))
async def get_history(order_id: uuid.UUID, engine: EngineDep, _: ReaderDep) -> list[dict[str, Any]]:
    found = await views.order_history(engine, order_id)
    if found is None:
        raise HTTPException(404, f"no order {order_id}")
    return found


@timeline_router.get("/timeline", response_model=TimelineOut,
                     summary="The order service's part of one order's timeline: the order's "
                             "audit rows, oldest first", responses=responses(401, 403, 422))
async def get_timeline(
    engine: EngineDep,
    _: ReaderDep,
    order_id: Annotated[str, params.text("the order's id", max_length=200)],
    limit: Annotated[int, params.limit(1000)] = 500,
    offset: params.Offset = 0,
) -> dict[str, Any]:
    # An unknown order is an empty part, not a 404: the service recorded nothing about it.
    entries = await views.order_timeline(engine, order_id, limit=limit, offset=offset)
    return {"order_id": order_id, "service": "order", "entries": entries}


def _order_response(order: Order) -> JSONResponse:
    view = views.order_view(order)
    return JSONResponse(view, headers={"ETag": f'"{view["version"]}"'})


def _request_hash(body: OrderIn) -> str:
    """Fingerprint of what was asked, so a reused Idempotency-Key with other content is caught."""
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
