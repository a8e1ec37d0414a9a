"""Persistence of the dispatch aggregate (async SQLAlchemy Core: no ORM loading on the hot path)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.dispatch.domain import Dispatch, Line, Status
from services.dispatch.tables import dispatch

Track = Callable[[Dispatch], Dispatch]


class DispatchRepository(Protocol):
    """What handlers need of dispatch storage (the SQL one below; a dict in unit tests)."""

    async def add(self, entity: Dispatch) -> bool:
        """Store a new dispatch; False (nothing stored) if its order already has one."""
        ...

    async def get(self, dispatch_id: uuid.UUID, *, for_update: bool = False) -> Dispatch | None: ...

    async def get_by_order(self, order_id: str, *, for_update: bool = False) -> Dispatch | None: ...

    async def save(self, entity: Dispatch) -> None:
        """Store the changes of a loaded dispatch (its version was bumped by the change)."""
        ...


# Built once: constructing the statement per message cost more than executing it.
_INSERT_DISPATCH = (
    pg_insert(dispatch).on_conflict_do_nothing(index_elements=["order_id"]).returning(dispatch.c.id)
)
_SELECT = sa.select(dispatch.c.id, dispatch.c.order_id, dispatch.c.status, dispatch.c.version,
                    dispatch.c.lines, dispatch.c.held_from, dispatch.c.facts,
                    dispatch.c.correlation_id)


class SqlAlchemyDispatchRepository:
    """Reads and writes dispatches on the unit of work's connection; tracks what it hands out."""

    def __init__(self, conn: AsyncConnection, track: Track) -> None:
        self.conn = conn
        self.track = track

    async def add(self, entity: Dispatch) -> bool:
        order = entity.order
        assert order is not None, "a new dispatch carries the order it was opened for"  # nosec B101 # narrows a type
        result = await self.conn.execute(_INSERT_DISPATCH, {
            "id": uuid.UUID(entity.id), "order_id": entity.order_id,
            "external_ref": order.external_ref, "source": order.source,
            "correlation_id": entity.correlation_id, "customer_id": order.customer_id,
            "requested_ship_date": order.requested_ship_date, "priority": order.priority,
            "ship_to": order.ship_to, "lines": order.lines,
            "status": entity.status.value, "version": entity.version,
        })
        if result.first() is None:
            return False
        self.track(entity)
        return True

    async def get(self, dispatch_id: uuid.UUID, *, for_update: bool = False) -> Dispatch | None:
        query = _SELECT.where(dispatch.c.id == dispatch_id)
        if for_update:
            query = query.with_for_update()
        row = (await self.conn.execute(query)).mappings().first()
        return self.track(_to_entity(row)) if row else None

    async def get_by_order(self, order_id: str, *, for_update: bool = False) -> Dispatch | None:
        query = _SELECT.where(dispatch.c.order_id == order_id)
        if for_update:
            query = query.with_for_update()
        row = (await self.conn.execute(query)).mappings().first()
        return self.track(_to_entity(row)) if row else None

    async def save(self, entity: Dispatch) -> None:
        # The row must still be at the version the change was decided on: a lost race is a 412.
        result = await self.conn.execute(
            sa.update(dispatch)
            .where(dispatch.c.id == uuid.UUID(entity.id), dispatch.c.version == entity.version - 1)
            .values(status=entity.status.value,
                    held_from=entity.held_from.value if entity.held_from else None,
                    version=entity.version, facts=entity.facts, updated_at=sa.func.now())
        )
        if result.rowcount != 1:
            raise RuntimeError(f"dispatch {entity.id} changed underneath its locked update")


def _to_entity(row: Any) -> Dispatch:
    facts = dict(row["facts"] or {})
    return Dispatch(
        id=str(row["id"]),
        order_id=row["order_id"],
        status=Status(row["status"]),
        version=row["version"],
        lines=[
            Line(int(x["line_no"]), x["product_id"], Decimal(str(x["quantity"])), x["uom"])
            for x in row["lines"]
        ],
        held_from=Status(row["held_from"]) if row["held_from"] else None,
        # Exceptions are not recorded yet (a later issue): a hold's owner is the one there is.
        exception_owners=frozenset(o for o in [facts.get("hold_owner")] if o),
        facts=facts,
        correlation_id=row["correlation_id"],
    )
