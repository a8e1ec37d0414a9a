"""Reads of the dispatch service (lists, one dispatch, its history): no aggregate, no lock."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.dispatch.domain import ENTITY
from services.dispatch.tables import (
    audit_log,
    dispatch,
    dispatch_approval,
    dispatch_exception,
    outbox,
)
from shared.audit import history, timeline


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
        return [_shown(r) for r in rows.mappings()]


def _shown(row: Any) -> dict[str, Any]:
    """A dispatch row as the API shows it: its corrections listed apart from its other facts."""
    return {**row, "corrections": (row["facts"] or {}).get("corrections", [])}


async def one_dispatch(engine: AsyncEngine, dispatch_id: uuid.UUID) -> dict[str, Any] | None:
    """The dispatch with its corrected values, its corrections and its exceptions."""
    async with engine.connect() as conn:
        found = (await conn.execute(sa.select(dispatch).where(dispatch.c.id == dispatch_id))
                 ).mappings().first()
        if found is None:
            return None
        exceptions = await conn.execute(
            sa.select(*_EXCEPTION_COLUMNS)
            .join(dispatch, dispatch.c.id == dispatch_exception.c.dispatch_id)
            .where(dispatch_exception.c.dispatch_id == dispatch_id)
            .order_by(dispatch_exception.c.opened_at, dispatch_exception.c.id))
        return {**_shown(found), "exceptions": [dict(r) for r in exceptions.mappings()]}


async def dispatch_history(engine: AsyncEngine, dispatch_id: uuid.UUID) -> list[dict[str, Any]] | None:
    """Every audit row of the dispatch, oldest first; None when there is no such dispatch."""
    async with engine.connect() as conn:
        exists = (await conn.execute(sa.select(dispatch.c.id).where(dispatch.c.id == dispatch_id))
                  ).first()
        return await history(conn, ENTITY, str(dispatch_id)) if exists else None


async def order_timeline(engine: AsyncEngine, order_id: str, *, limit: int,
                         offset: int) -> list[dict[str, Any]]:
    """The dispatch service's part of an order's timeline, from its audit log.

    Found by entity, not by correlation id: a person's move over HTTP starts a new correlation,
    so the id only ties together what one message caused. Exceptions, approvals and corrections
    are audited as rows of their dispatch (their own ids are in `details`), so the dispatch's
    rows are all of them; a cancellation parked before the dispatch existed is a row of the
    order, and a rejected outside report names the order, when it could, in its details.
    """
    a = audit_log.c
    dispatch_ids = sa.select(sa.cast(dispatch.c.id, sa.Text)).where(dispatch.c.order_id == order_id)
    about = (((a.entity_type == ENTITY) & a.entity_id.in_(dispatch_ids))
             | ((a.entity_type == "order") & (a.entity_id == order_id))
             | ((a.entity_type == "external_report") & (a.details["order_id"].astext == order_id)))
    async with engine.connect() as conn:
        return await timeline(conn, audit_log, outbox, about, service="dispatch", limit=limit,
                              offset=offset)


_EXCEPTION_COLUMNS = (
    dispatch_exception, dispatch.c.order_id,
    (dispatch_exception.c.status.in_(("open", "acknowledged"))
     & (dispatch_exception.c.due_at <= sa.func.now())).label("overdue"),
)


async def list_exceptions(
    engine: AsyncEngine, *, status: str | None, owner: str | None, dispatch_id: uuid.UUID | None,
    reason_code: str | None, overdue: bool | None, limit: int, offset: int,
) -> list[dict[str, Any]]:
    """Exceptions, the most urgent (earliest due) first."""
    x = dispatch_exception
    query = (sa.select(*_EXCEPTION_COLUMNS).join(dispatch, dispatch.c.id == x.c.dispatch_id)
             .order_by(x.c.due_at, x.c.id))
    if status:
        query = query.where(x.c.status == status)
    if owner:
        query = query.where(x.c.owner == owner)
    if dispatch_id:
        query = query.where(x.c.dispatch_id == dispatch_id)
    if reason_code:
        query = query.where(x.c.reason_code == reason_code)
    if overdue is not None:
        due = x.c.status.in_(("open", "acknowledged")) & (x.c.due_at <= sa.func.now())
        query = query.where(due if overdue else ~due)
    async with engine.connect() as conn:
        rows = await conn.execute(query.limit(limit).offset(offset))
        return [dict(r) for r in rows.mappings()]


async def one_exception(engine: AsyncEngine, exception_id: uuid.UUID) -> dict[str, Any] | None:
    query = (sa.select(*_EXCEPTION_COLUMNS)
             .join(dispatch, dispatch.c.id == dispatch_exception.c.dispatch_id)
             .where(dispatch_exception.c.id == exception_id))
    async with engine.connect() as conn:
        found = (await conn.execute(query)).mappings().first()
        return dict(found) if found else None


async def list_approvals(
    engine: AsyncEngine, *, status: str | None, kind: str | None, dispatch_id: uuid.UUID | None,
    limit: int, offset: int,
) -> list[dict[str, Any]]:
    """Approval requests, the oldest first (what waits longest is decided first)."""
    a = dispatch_approval
    query = (sa.select(a, dispatch.c.order_id).join(dispatch, dispatch.c.id == a.c.dispatch_id)
             .order_by(a.c.requested_at, a.c.id))
    if status:
        query = query.where(a.c.status == status)
    if kind:
        query = query.where(a.c.kind == kind)
    if dispatch_id:
        query = query.where(a.c.dispatch_id == dispatch_id)
    async with engine.connect() as conn:
        rows = await conn.execute(query.limit(limit).offset(offset))
        return [dict(r) for r in rows.mappings()]


async def one_approval(engine: AsyncEngine, approval_id: uuid.UUID) -> dict[str, Any] | None:
    query = (sa.select(dispatch_approval, dispatch.c.order_id)
             .join(dispatch, dispatch.c.id == dispatch_approval.c.dispatch_id)
             .where(dispatch_approval.c.id == approval_id))
    async with engine.connect() as conn:
        found = (await conn.execute(query)).mappings().first()
        return dict(found) if found else None
