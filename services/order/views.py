"""Reads of the order service (lists, one order, its history) and the order as the API shows it."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.order.domain import ENTITY, Order, OrderLine, Status
from services.order.repository import ORDERS_WITH_LINES, order_from_row
from services.order.tables import audit_log, customer_order, outbox
from shared.audit import history, timeline

# What POST /orders answers for the order it created, the first time and on every replay.
CREATED = 201


def order_view(order: Order) -> dict[str, Any]:
    """An order as the API returns it (and as an Idempotency-Key replay returns it)."""
    return {
        "id": str(order.id),
        "status": order.status.value,
        "version": order.version,
        "source": order.source,
        "external_ref": order.external_ref,
        "customer_id": order.customer_id,
        "requested_ship_date": order.requested_ship_date.isoformat(),
        "priority": order.priority,
        "ship_to": dict(order.ship_to),
        "lines": [
            {"line_no": x.line_no, "product_id": x.product_id, "quantity": str(x.quantity),
             "uom": x.uom}
            for x in order.lines
        ],
        "correlation_id": str(order.correlation_id),
        "created_by": order.created_by,
        "created_at": order.created_at.isoformat() if order.created_at else None,
        "updated_at": order.updated_at.isoformat() if order.updated_at else None,
    }


def order_from_view(view: dict[str, Any]) -> Order:
    """The order an `order_view` shows (what an Idempotency-Key keeps, read back for a replay)."""
    return Order(
        id=uuid.UUID(view["id"]),
        status=Status(view["status"]),
        version=view["version"],
        customer_id=view["customer_id"],
        requested_ship_date=date.fromisoformat(view["requested_ship_date"]),
        priority=view["priority"],
        ship_to=dict(view["ship_to"]),
        lines=[OrderLine(x["line_no"], x["product_id"], Decimal(x["quantity"]), x["uom"])
               for x in view["lines"]],
        correlation_id=uuid.UUID(view["correlation_id"]),
        created_by=view["created_by"],
        source=view["source"],
        external_ref=view["external_ref"],
        created_at=_moment(view["created_at"]),
        updated_at=_moment(view["updated_at"]),
    )


def _moment(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


async def list_orders(
    engine: AsyncEngine,
    *,
    status: str | None = None,
    customer_id: str | None = None,
    source: str | None = None,
    external_ref: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """A page of orders, newest first, each with its lines (one query)."""
    query = ORDERS_WITH_LINES.order_by(customer_order.c.created_at.desc(), customer_order.c.id)
    for column, value in (
        (customer_order.c.status, status),
        (customer_order.c.customer_id, customer_id),
        (customer_order.c.source, source),
        (customer_order.c.external_ref, external_ref),
    ):
        if value is not None:
            query = query.where(column == value)
    async with engine.connect() as conn:
        rows = await conn.execute(query.limit(limit).offset(offset))
        return [order_view(order_from_row(r)) for r in rows.mappings()]


async def one_order(engine: AsyncEngine, order_id: uuid.UUID) -> dict[str, Any] | None:
    """One order with its lines, or None."""
    async with engine.connect() as conn:
        row = (await conn.execute(ORDERS_WITH_LINES.where(customer_order.c.id == order_id))
               ).mappings().first()
    return order_view(order_from_row(row)) if row else None


async def order_history(engine: AsyncEngine, order_id: uuid.UUID) -> list[dict[str, Any]] | None:
    """Every audit row of the order, oldest first; None when there is no such order."""
    async with engine.connect() as conn:
        exists = (await conn.execute(
            sa.select(customer_order.c.id).where(customer_order.c.id == order_id))).first()
        return await history(conn, ENTITY, str(order_id)) if exists else None


async def order_timeline(engine: AsyncEngine, order_id: str, *, limit: int,
                         offset: int) -> list[dict[str, Any]]:
    """The order service's part of an order's timeline: the order's own audit rows.

    A submission refused before it became an order (`order.rejected`) names no order id, so it
    is not part of any order's timeline; a duplicate submission names the order it repeated.
    """
    about = (audit_log.c.entity_type == ENTITY) & (audit_log.c.entity_id == order_id)
    async with engine.connect() as conn:
        return await timeline(conn, audit_log, outbox, about, service="order", limit=limit,
                              offset=offset)
