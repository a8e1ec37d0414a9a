"""Persistence of the dispatch aggregate (async SQLAlchemy Core: no ORM loading on the hot path)."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.dispatch.domain import Dispatch, Line, Status
from services.dispatch.tables import dispatch, dispatch_exception

_open_exceptions = (
    sa.select(
        sa.func.count().label("open_exceptions"),
        sa.func.count().filter(dispatch_exception.c.blocking).label("open_blocking"),
        sa.func.array_agg(dispatch_exception.c.owner).label("owners"),
    )
    .where(
        dispatch_exception.c.dispatch_id == dispatch.c.id,
        dispatch_exception.c.status == "open",
    )
    .lateral("open_exc")
)


# Built once: constructing the statement per message cost more than executing it.
_INSERT_DISPATCH = (
    pg_insert(dispatch).on_conflict_do_nothing(index_elements=["order_id"]).returning(dispatch.c.id)
)


class SqlAlchemyDispatchRepository:
    """Reads and writes dispatches on the unit of work's connection."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def add(self, row: dict[str, Any]) -> bool:
        """Insert a new dispatch; False if the order already has one (unique order_id)."""
        result = await self.conn.execute(_INSERT_DISPATCH, row)
        return result.first() is not None

    async def get(self, dispatch_id: uuid.UUID, *, for_update: bool = False) -> Dispatch | None:
        query = sa.select(dispatch, _open_exceptions).select_from(
            dispatch.join(_open_exceptions, sa.true())
        ).where(dispatch.c.id == dispatch_id)
        if for_update:
            query = query.with_for_update(of=dispatch)
        row = (await self.conn.execute(query)).mappings().first()
        return _to_entity(row) if row else None

    async def get_by_order(self, order_id: str, *, for_update: bool = False) -> Dispatch | None:
        query = sa.select(dispatch.c.id).where(dispatch.c.order_id == order_id)
        found = (await self.conn.execute(query)).scalar()
        return await self.get(found, for_update=for_update) if found else None

    async def save_transition(
        self, entity: Dispatch, *, new_status: Status, facts: dict[str, Any]
    ) -> int:
        """Store a decided transition, bumping the version it was decided on."""
        held_from = entity.status if new_status == Status.ON_HOLD else None
        result = await self.conn.execute(
            sa.update(dispatch)
            .where(dispatch.c.id == uuid.UUID(entity.id), dispatch.c.version == entity.version)
            .values(
                status=new_status.value,
                held_from=held_from.value if held_from else None,
                version=dispatch.c.version + 1,
                facts=dispatch.c.facts.op("||")(sa.cast(facts, dispatch.c.facts.type)),
                updated_at=sa.func.now(),
            )
            .returning(dispatch.c.version)
        )
        return int(result.scalar_one())


async def fetch_dispatch(conn: AsyncConnection, dispatch_id: uuid.UUID) -> dict[str, Any] | None:
    row = (await conn.execute(sa.select(dispatch).where(dispatch.c.id == dispatch_id))).mappings()
    found = row.first()
    return dict(found) if found else None


async def list_dispatches(
    conn: AsyncConnection, *, status: str | None, order_id: str | None, limit: int, offset: int
) -> list[dict[str, Any]]:
    query = sa.select(dispatch).order_by(dispatch.c.created_at.desc(), dispatch.c.id)
    if status:
        query = query.where(dispatch.c.status == status)
    if order_id:
        query = query.where(dispatch.c.order_id == order_id)
    rows = await conn.execute(query.limit(limit).offset(offset))
    return [dict(r) for r in rows.mappings()]


def _to_entity(row: Any) -> Dispatch:
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
        open_exceptions=row["open_exceptions"] or 0,
        open_blocking_exceptions=row["open_blocking"] or 0,
        exception_owners=frozenset(
            o for o in [*(row["owners"] or []), (row["facts"] or {}).get("hold_owner")] if o
        ),
        facts=dict(row["facts"] or {}),
        correlation_id=row["correlation_id"],
    )
