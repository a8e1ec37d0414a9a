"""Reads of the erp_adapter (import runs, the integration log): no unit of work, no lock."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.ext.asyncio import AsyncEngine

from services.erp_adapter.reconciliation import Acknowledged, Report, reconcile
from services.erp_adapter.tables import (
    confirmation,
    conflict,
    connector,
    dispatch_replica,
    import_run,
    integration_log,
)


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
    limit: int,
    offset: int = 0,
    before_id: int | None = None,
    oldest_first: bool = False,
    **filters: Any,
) -> list[dict[str, Any]]:
    """Newest first (or oldest, for a timeline); `before_id` pages back through older entries.

    `filters`: column → value, for the columns the route lets a caller filter on (None: any).
    """
    query = sa.select(integration_log)
    for column, value in filters.items():
        if value is not None:
            query = query.where(integration_log.c[column] == value)
    if before_id:
        query = query.where(integration_log.c.id < before_id)
    order = integration_log.c.id.asc() if oldest_first else integration_log.c.id.desc()
    async with engine.connect() as conn:
        rows = await conn.execute(query.order_by(order).limit(limit).offset(offset))
        return [dict(r) for r in rows.mappings()]


async def list_conflicts(engine: AsyncEngine, *, limit: int, offset: int,
                         **filters: Any) -> list[dict[str, Any]]:
    """Newest first; `filters`: column → value (None: any)."""
    query = sa.select(conflict)
    for column, value in filters.items():
        if value is not None:
            query = query.where(conflict.c[column] == value)
    query = query.order_by(conflict.c.detected_at.desc(), conflict.c.id)
    async with engine.connect() as conn:
        rows = await conn.execute(query.limit(limit).offset(offset))
        return [dict(r) for r in rows.mappings()]


async def fetch_conflict(engine: AsyncEngine, conflict_id: uuid.UUID) -> dict[str, Any] | None:
    async with engine.connect() as conn:
        found = (await conn.execute(sa.select(conflict).where(conflict.c.id == conflict_id))
                 ).mappings().first()
        return dict(found) if found else None


async def list_confirmations(engine: AsyncEngine, *, limit: int, offset: int,
                             **filters: Any) -> list[dict[str, Any]]:
    """Newest first; `filters`: column → value (None: any)."""
    query = sa.select(confirmation)
    for column, value in filters.items():
        if value is not None:
            query = query.where(confirmation.c[column] == value)
    query = query.order_by(confirmation.c.seq.desc())
    async with engine.connect() as conn:
        rows = await conn.execute(query.limit(limit).offset(offset))
        return [dict(r) for r in rows.mappings()]


async def fetch_confirmation(engine: AsyncEngine, confirmation_id: uuid.UUID
                             ) -> dict[str, Any] | None:
    async with engine.connect() as conn:
        found = (await conn.execute(sa.select(confirmation).where(
            confirmation.c.id == confirmation_id))).mappings().first()
        return dict(found) if found else None


async def list_connectors(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(sa.select(connector).order_by(connector.c.name))
        return [dict(r) for r in rows.mappings()]


async def reconciliation(engine: AsyncEngine) -> Report:
    """Shipped dispatches (the replica) against the ERP's acknowledgements, field by field."""
    newest = (sa.select(confirmation.c.dispatch_id, confirmation.c.status,
                        confirmation.c.event_id, confirmation.c.document, confirmation.c.response)
              .order_by(confirmation.c.dispatch_id, confirmation.c.dispatch_version.desc(),
                        confirmation.c.seq.desc()))
    one_per_dispatch = distinct_on(confirmation.c.dispatch_id)  # the newest of each
    async with engine.connect() as conn:
        replica = (await conn.execute(sa.select(dispatch_replica).where(
            dispatch_replica.c.shipped_at.is_not(None)))).mappings().all()
        latest = (await conn.execute(newest.ext(one_per_dispatch))).mappings().all()
        acked = (await conn.execute(newest.where(
            confirmation.c.status == "acknowledged").ext(one_per_dispatch))
                 ).mappings().all()
        unmatched = (await conn.execute(sa.select(integration_log.c.record_key,
                                                  integration_log.c.detail).where(
            integration_log.c.kind == "confirmation",
            integration_log.c.outcome == "unmatched"))).mappings().all()
    shipped = {r["dispatch_id"]: {"order_id": r["order_id"], "carrier": r["carrier"],
                                  "tracking_number": r["tracking_number"], "lines": r["lines"]}
               for r in replica}
    return reconcile(
        shipped,
        {r["dispatch_id"]: Acknowledged(str(r["event_id"]), r["document"], r["response"])
         for r in acked},
        {r["dispatch_id"]: r["status"] for r in latest},
        [{"idempotency_key": r["record_key"], "detail": r["detail"]} for r in unmatched])
