"""Reads of the erp_adapter (import runs, the integration log): no unit of work, no lock."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.erp_adapter.tables import import_run, integration_log


async def list_runs(
    engine: AsyncEngine, *, kind: str | None, limit: int, offset: int
) -> list[dict[str, Any]]:
    """Newest first, without their rejected rows (`fetch_run` has those)."""
    query = sa.select(*(c for c in import_run.c if c.name != "errors"))
    if kind:
        query = query.where(import_run.c.kind == kind)
    query = query.order_by(import_run.c.started_at.desc(), import_run.c.id)
    async with engine.connect() as conn:
        rows = await conn.execute(query.limit(limit).offset(offset))
        return [dict(r) for r in rows.mappings()]


async def fetch_run(engine: AsyncEngine, run_id: uuid.UUID) -> dict[str, Any] | None:
    async with engine.connect() as conn:
        found = (await conn.execute(sa.select(import_run).where(import_run.c.id == run_id))
                 ).mappings().first()
        return dict(found) if found else None


async def list_log(
    engine: AsyncEngine,
    *,
    kind: str | None,
    outcome: str | None,
    correlation_id: uuid.UUID | None,
    before_id: int | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Newest first; `before_id` pages back through older entries."""
    query = sa.select(integration_log)
    if kind:
        query = query.where(integration_log.c.kind == kind)
    if outcome:
        query = query.where(integration_log.c.outcome == outcome)
    if correlation_id:
        query = query.where(integration_log.c.correlation_id == correlation_id)
    if before_id:
        query = query.where(integration_log.c.id < before_id)
    async with engine.connect() as conn:
        rows = await conn.execute(query.order_by(integration_log.c.id.desc()).limit(limit))
        return [dict(r) for r in rows.mappings()]
