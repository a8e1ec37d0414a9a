"""Persistence of orders, replicas and idempotency keys (async SQLAlchemy Core, no ORM)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, aggregate_order_by
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.order.domain import (
    CustomerReplica,
    Order,
    OrderDraft,
    OrderLine,
    ProductReplica,
    Status,
)
from services.order.tables import (
    customer,
    customer_order,
    idempotency_key,
    order_line,
    product,
)

# An order's lines as one JSON array, so an order (or a page of them) is one query. The
# quantity travels as text: a JSON number would come back as a float.
_lines = (
    sa.select(
        sa.func.coalesce(
            sa.func.jsonb_agg(
                aggregate_order_by(
                    sa.func.jsonb_build_object(
                        "line_no", order_line.c.line_no,
                        "product_id", order_line.c.product_id,
                        "quantity", sa.cast(order_line.c.quantity, sa.Text),
                        "uom", order_line.c.uom,
                    ),
                    order_line.c.line_no,
                ),
                type_=JSONB,
            ),
            sa.text("'[]'::jsonb"),
            type_=JSONB,
        )
    )
    .where(order_line.c.order_id == customer_order.c.id)
    .scalar_subquery()
    .label("lines")
)


# The hot-path statements are built once, with bind parameters, and executed with plain dicts:
# building one per message (`.values(...)`, `.where(col == value)`) spends far more CPU on
# construction and cache keys than executing it (measured: ~370 µs against ~20 µs an insert).


def _facts_query(source_matches: sa.ColumnElement[bool] | None = None) -> sa.CompoundSelect:
    """One round trip: the customer, the products, and (with a source condition) the ref's order."""
    null_text = sa.cast(sa.null(), sa.Text)
    parts: list[sa.Select] = [
        sa.select(
            sa.literal_column("'customer'").label("kind"),
            customer.c.id.label("id"),
            customer.c.active.label("active"),
            null_text.label("uom"),
        ).where(customer.c.id == sa.bindparam("customer_id")),
        # `= ANY(array)` keeps one statement whatever the line count, so its plan is reused.
        sa.select(
            sa.literal_column("'product'"), product.c.id, product.c.active, product.c.uom
        ).where(product.c.id == sa.any_(sa.bindparam("product_ids", type_=ARRAY(sa.Text)))),
    ]
    if source_matches is not None:
        parts.append(
            sa.select(
                sa.literal_column("'order'"),
                sa.cast(customer_order.c.id, sa.Text),
                sa.cast(sa.null(), sa.Boolean),
                null_text,
            ).where(
                customer_order.c.external_ref == sa.bindparam("external_ref"), source_matches
            )
        )
    return sa.union_all(*parts)


_FACTS = _facts_query()
# `source = NULL` never matches, so orders entered in Spine need their own variant.
_FACTS_LOCAL_REF = _facts_query(customer_order.c.source.is_(None))
_FACTS_SOURCE_REF = _facts_query(customer_order.c.source == sa.bindparam("source"))

_INSERT_ORDER = (
    pg_insert(customer_order)
    # A concurrent submission of the same reference won the race: not an error, a duplicate.
    .on_conflict_do_nothing()
    .returning(customer_order.c.created_at, customer_order.c.updated_at)
)
_INSERT_LINES = sa.insert(order_line)

_SELECT_ORDER = sa.select(customer_order, _lines).where(
    customer_order.c.id == sa.bindparam("order_id")
)
_SELECT_ORDER_FOR_UPDATE = _SELECT_ORDER.with_for_update(of=customer_order)

_UPDATE_STATUS = (
    sa.update(customer_order)
    # Guarded by the version the decision was made on, although the row is locked already.
    .where(customer_order.c.id == sa.bindparam("b_id"),
           customer_order.c.version == sa.bindparam("b_version"))
    .values(status=sa.bindparam("b_status"), version=customer_order.c.version + 1,
            updated_at=sa.func.now())
    .returning(customer_order.c.version, customer_order.c.updated_at)
)


def _upsert_newer(table: sa.Table, columns: list[str]) -> Any:
    """INSERT … ON CONFLICT DO UPDATE, applied only when the incoming version is newer."""
    stmt = pg_insert(table)
    return stmt.on_conflict_do_update(
        index_elements=[table.c.id],
        set_={**{c: stmt.excluded[c] for c in columns}, "updated_at": sa.func.now()},
        where=table.c.version < stmt.excluded.version,
    ).returning(
        # xmax is 0 only on a freshly inserted row version: inserted vs updated, no 2nd query.
        sa.literal_column("xmax = 0", sa.Boolean)
    )


_UPSERT_CUSTOMER = _upsert_newer(customer, ["name", "active", "version"])
_UPSERT_PRODUCT = _upsert_newer(product, ["name", "uom", "active", "version"])


@dataclass(frozen=True)
class SubmissionFacts:
    """What deciding on a new order needs from the database, read in one round trip."""

    customer: CustomerReplica | None
    products: dict[str, ProductReplica]
    existing_order_id: uuid.UUID | None


class SqlAlchemyOrderRepository:
    """Reads and writes orders on the unit of work's connection."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def references(
        self, customer_id: str | None, product_ids: list[str]
    ) -> tuple[CustomerReplica | None, dict[str, ProductReplica]]:
        """The replicas of a customer and products, for checking a contract-breaking submission."""
        rows = (await self.conn.execute(
            _FACTS, {"customer_id": customer_id or "", "product_ids": sorted(set(product_ids))}
        )).all()
        customer = next((CustomerReplica(id=i, active=a) for k, i, a, _ in rows
                         if k == "customer"), None)
        products = {i: ProductReplica(id=i, active=a, uom=u) for k, i, a, u in rows if k == "product"}
        return customer, products

    async def facts_for(self, draft: OrderDraft) -> SubmissionFacts:
        """The customer, the products and any order already holding the draft's external_ref."""
        params: dict[str, Any] = {"customer_id": draft.customer_id,
                                  "product_ids": draft.product_ids}
        if draft.external_ref is None:
            query = _FACTS
        else:
            params["external_ref"] = draft.external_ref
            if draft.source is None:
                query = _FACTS_LOCAL_REF
            else:
                query = _FACTS_SOURCE_REF
                params["source"] = draft.source
        rows = (await self.conn.execute(query, params)).all()
        found_customer: CustomerReplica | None = None
        products: dict[str, ProductReplica] = {}
        existing: uuid.UUID | None = None
        for kind, id_, active, uom in rows:
            if kind == "customer":
                found_customer = CustomerReplica(id=id_, active=active)
            elif kind == "product":
                products[id_] = ProductReplica(id=id_, active=active, uom=uom)
            else:
                existing = uuid.UUID(id_)
        return SubmissionFacts(found_customer, products, existing)

    async def add(self, order: Order) -> bool:
        """Insert a new order and its lines; False if its (source, external_ref) is taken."""
        result = await self.conn.execute(
            _INSERT_ORDER,
            {
                "id": order.id,
                "source": order.source,
                "external_ref": order.external_ref,
                "customer_id": order.customer_id,
                "requested_ship_date": order.requested_ship_date,
                "priority": order.priority,
                "ship_to": order.ship_to,
                "status": order.status.value,
                "version": order.version,
                "correlation_id": order.correlation_id,
                "created_by": order.created_by,
            },
        )
        stamps = result.first()
        if stamps is None:
            return False
        order.created_at, order.updated_at = stamps
        await self.conn.execute(
            _INSERT_LINES,
            [
                {
                    "order_id": order.id,
                    "line_no": line.line_no,
                    "product_id": line.product_id,
                    "quantity": line.quantity,
                    "uom": line.uom,
                }
                for line in order.lines
            ],
        )
        return True

    async def find_id(self, source: str | None, external_ref: str) -> uuid.UUID | None:
        result = await self.conn.execute(
            sa.select(customer_order.c.id).where(
                customer_order.c.external_ref == external_ref, _same_source(source)
            )
        )
        return result.scalar()

    async def get(self, order_id: uuid.UUID, *, for_update: bool = False) -> Order | None:
        query = _SELECT_ORDER_FOR_UPDATE if for_update else _SELECT_ORDER
        row = (await self.conn.execute(query, {"order_id": order_id})).mappings().first()
        return _to_order(row) if row else None

    async def save_status(self, order: Order, new_status: Status) -> tuple[int, datetime]:
        """Store a decided status change, bumping the version it was decided on."""
        result = await self.conn.execute(
            _UPDATE_STATUS,
            {"b_id": order.id, "b_version": order.version, "b_status": new_status.value},
        )
        version, updated_at = result.one()
        return int(version), updated_at


class SqlAlchemyReplicaRepository:
    """Keeps the ERP's customers and products, newest version wins."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def upsert_customer(
        self, *, customer_id: str, name: str, active: bool, version: int
    ) -> str | None:
        """'inserted', 'updated', or None when the stored version is as new or newer."""
        return await self._upsert(
            _UPSERT_CUSTOMER,
            {"id": customer_id, "name": name, "active": active, "version": version},
        )

    async def upsert_product(
        self, *, product_id: str, name: str, uom: str, active: bool, version: int
    ) -> str | None:
        """'inserted', 'updated', or None when the stored version is as new or newer."""
        return await self._upsert(
            _UPSERT_PRODUCT,
            {"id": product_id, "name": name, "uom": uom, "active": active, "version": version},
        )

    async def _upsert(self, statement: Any, values: dict[str, Any]) -> str | None:
        row = (await self.conn.execute(statement, values)).first()
        if row is None:
            return None
        return "inserted" if row[0] else "updated"


@dataclass(frozen=True)
class StoredResponse:
    request_hash: str
    status: int
    body: Any


class SqlAlchemyIdempotencyStore:
    """The first response to each (caller, Idempotency-Key), stored with the effect it reports."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def claim(self, principal: str, key: str, request_hash: str) -> StoredResponse | None:
        """None when this transaction now owns the key; else the response stored for it.

        A concurrent request with the same key blocks on the insert until the first commits
        (then it reads the stored response) or rolls back (then it owns the key).
        """
        claimed = await self.conn.execute(
            pg_insert(idempotency_key).on_conflict_do_nothing().returning(sa.literal(1)),
            {"principal": principal, "key": key, "request_hash": request_hash},
        )
        if claimed.first() is not None:
            return None
        row = (
            await self.conn.execute(
                sa.select(
                    idempotency_key.c.request_hash,
                    idempotency_key.c.response_status,
                    idempotency_key.c.response_body,
                ).where(idempotency_key.c.principal == principal, idempotency_key.c.key == key)
            )
        ).one()
        return StoredResponse(row.request_hash, row.response_status, row.response_body)

    async def complete(self, principal: str, key: str, status: int, body: Any) -> None:
        await self.conn.execute(
            sa.update(idempotency_key)
            .where(idempotency_key.c.principal == principal, idempotency_key.c.key == key)
            .values(response_status=status, response_body=body)
        )


# ---------------------------------------------------------------------------- read side


async def list_orders(
    conn: AsyncConnection,
    *,
    status: str | None = None,
    customer_id: str | None = None,
    source: str | None = None,
    external_ref: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[Order]:
    """A page of orders, newest first, each with its lines (one query)."""
    query = sa.select(customer_order, _lines).order_by(
        customer_order.c.created_at.desc(), customer_order.c.id
    )
    for column, value in (
        (customer_order.c.status, status),
        (customer_order.c.customer_id, customer_id),
        (customer_order.c.source, source),
        (customer_order.c.external_ref, external_ref),
    ):
        if value is not None:
            query = query.where(column == value)
    rows = await conn.execute(query.limit(limit).offset(offset))
    return [_to_order(r) for r in rows.mappings()]


def _same_source(source: str | None) -> sa.ColumnElement[bool]:
    # `= NULL` never matches; orders entered in Spine have no source.
    if source is None:
        return customer_order.c.source.is_(None)
    return customer_order.c.source == source


def _to_order(row: Any) -> Order:
    return Order(
        id=row["id"],
        status=Status(row["status"]),
        version=row["version"],
        customer_id=row["customer_id"],
        requested_ship_date=row["requested_ship_date"],
        priority=row["priority"],
        ship_to=dict(row["ship_to"]),
        lines=[
            OrderLine(int(x["line_no"]), x["product_id"], Decimal(x["quantity"]), x["uom"])
            for x in row["lines"]
        ],
        correlation_id=row["correlation_id"],
        created_by=row["created_by"],
        source=row["source"],
        external_ref=row["external_ref"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )
