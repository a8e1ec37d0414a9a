"""Reads of the dispatch service (lists, one dispatch, its history): no aggregate, no lock."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.dispatch.domain import ENTITY
from services.dispatch.tables import dispatch
from shared.audit import history


async def list_dispatches(
    engine: AsyncEngine, *, status: str | None, order_id: str | None, limit: int, offset: int
) -> list[dict[str, Any]]:
    query = sa.select(dispatch).order_by(dispatch.c.created_at.desc(), dispatch.c.id)
    if status:
        query = query.where(dispatch.c.status == status)
    if order_id:
        query = query.where(dispatch.c.order_id == order_id)
    async with engine.connect() as conn:
        rows = await conn.execute(query.limit(limit).offset(offset))
        return [dict(r) for r in rows.mappings()]


async def one_dispatch(engine: AsyncEngine, dispatch_id: uuid.UUID) -> dict[str, Any] | None:
    async with engine.connect() as conn:
        found = (await conn.execute(sa.select(dispatch).where(dispatch.c.id == dispatch_id))
                 ).mappings().first()
        return dict(found) if found else None


async def dispatch_history(engine: AsyncEngine, dispatch_id: uuid.UUID) -> list[dict[str, Any]] | None:
    """Every audit row of the dispatch, oldest first; None when there is no such dispatch."""
    async with engine.connect() as conn:
        exists = (await conn.execute(sa.select(dispatch.c.id).where(dispatch.c.id == dispatch_id))
                  ).first()
        return await history(conn, ENTITY, str(dispatch_id)) if exists else None
