"""Persistence of the dispatch aggregate (async SQLAlchemy Core: no ORM loading on the hot path).

A dispatch is read with its exceptions and approval requests (a handful per dispatch), and
written back by comparing versions with what was read: the row must
still be at the version the change was decided on, and only the records that changed are
written.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.ext.asyncio import AsyncConnection

from services.dispatch.domain import (
    Approval,
    ApprovalKind,
    ApprovalStatus,
    Dispatch,
    ExceptionRecord,
    ExceptionStatus,
    Line,
    Parked,
    Status,
)
from services.dispatch.tables import dispatch, dispatch_approval, dispatch_exception, dispatch_parked

Track = Callable[[Dispatch], Dispatch]


class DispatchRepository(Protocol):
    """What handlers need of dispatch storage (the SQL one below; a dict in unit tests)."""

    async def add(self, entity: Dispatch) -> list[Parked] | None:
        """Store a new dispatch and return what was parked for its order (applied next);
        None (nothing stored) if its order already has one."""
        ...

    async def park(self, parked: Parked) -> None:
        """Keep a message about an order whose dispatch does not exist yet."""
        ...

    async def applied(self, parked: list[Parked]) -> None:
        """Mark parked messages applied (in the transaction that applied them)."""
        ...

    async def get_by_ref(self, source: str, external_ref: str) -> Dispatch | None:
        """The dispatch of the order `source` submitted as `external_ref`, locked for update."""
        ...

    async def get(self, dispatch_id: uuid.UUID, *, for_update: bool = False) -> Dispatch | None: ...

    async def get_by_order(self, order_id: str, *, for_update: bool = False) -> Dispatch | None: ...

    async def get_by_exception(self, exception_id: uuid.UUID) -> Dispatch | None:
        """The dispatch an exception belongs to, locked for update."""
        ...

    async def get_by_approval(self, approval_id: uuid.UUID) -> Dispatch | None:
        """The dispatch an approval request belongs to, locked for update."""
        ...

    async def overdue(self, now: datetime, *, limit: int) -> list[uuid.UUID]:
        """Dispatches with an open or acknowledged exception due by `now` (not locked)."""
        ...

    async def save(self, entity: Dispatch) -> None:
        """Store the changes of a loaded dispatch and of its exceptions and approvals."""
        ...


# Built once: constructing the statement per message cost more than executing it. One round
# trip: the new row (none if the order has its dispatch) and whatever was parked for its order.
_INSERT_DISPATCH = sa.text("""
WITH new AS (
    INSERT INTO dispatch (id, order_id, external_ref, source, correlation_id, customer_id,
                          requested_ship_date, priority, ship_to, lines, status, version)
    VALUES (:id, :order_id, :external_ref, :source, :correlation_id, :customer_id,
            :requested_ship_date, :priority, :ship_to, :lines, :status, :version)
    ON CONFLICT (order_id) DO NOTHING RETURNING id
)
SELECT (SELECT id FROM new) AS id,
       (SELECT json_agg(p ORDER BY p.parked_at) FROM dispatch_parked p
        WHERE p.applied_at IS NULL
          AND (p.order_id = :order_id OR (p.source = :source AND p.external_ref = :external_ref))
       ) AS parked
""").bindparams(sa.bindparam("ship_to", type_=JSONB), sa.bindparam("lines", type_=JSONB),
                sa.bindparam("id", type_=UUID(as_uuid=True)),
                sa.bindparam("correlation_id", type_=UUID(as_uuid=True)),
                sa.bindparam("requested_ship_date", type_=sa.Date))
_EXCEPTIONS = (
    sa.select(sa.func.coalesce(sa.func.json_agg(sa.text("x ORDER BY x.opened_at, x.id")),
                               sa.text("'[]'::json")))
    .select_from(dispatch_exception.alias("x"))
    .where(sa.text("x.dispatch_id = dispatch.id"))
    .scalar_subquery()
)
_APPROVALS = (
    sa.select(sa.func.coalesce(sa.func.json_agg(sa.text("a ORDER BY a.requested_at, a.id")),
                               sa.text("'[]'::json")))
    .select_from(dispatch_approval.alias("a"))
    .where(sa.text("a.dispatch_id = dispatch.id"))
    .scalar_subquery()
)
_COLUMNS = (dispatch.c.id, dispatch.c.order_id, dispatch.c.status, dispatch.c.version,
            dispatch.c.lines, dispatch.c.held_from, dispatch.c.facts, dispatch.c.correlation_id)
_SELECT = sa.select(*_COLUMNS, _EXCEPTIONS.label("exceptions"), _APPROVALS.label("approvals"))
# Locking reads take two statements: a statement that waited for the row lock sees the row as
# the other transaction left it, but its sub-selects still see its own (older) snapshot, so the
# records are read after the lock is held, by a statement with a fresh snapshot.
_LOCK = sa.select(*_COLUMNS).with_for_update()
_RECORDS = sa.select(_EXCEPTIONS.label("exceptions"), _APPROVALS.label("approvals")).where(
    dispatch.c.id == sa.bindparam("dispatch_id"))
_STATUS_AT = {ExceptionStatus.ACKNOWLEDGED: "acknowledged_at",
              ExceptionStatus.ESCALATED: "escalated_at", ExceptionStatus.RESOLVED: "resolved_at"}


class SqlAlchemyDispatchRepository:
    """Reads and writes dispatches on the unit of work's connection; tracks what it hands out."""

    def __init__(self, conn: AsyncConnection, track: Track) -> None:
        self.conn = conn
        self.track = track
        # What was read (id → version, status), to write back only what changed since.
        self._read: dict[str, tuple[int, str]] = {}

    async def add(self, entity: Dispatch) -> list[Parked] | None:
        order = entity.order
        assert order is not None, "a new dispatch carries the order it was opened for"  # nosec B101 # narrows a type
        row = (await self.conn.execute(_INSERT_DISPATCH, {
            "id": uuid.UUID(entity.id), "order_id": entity.order_id,
            "external_ref": order.external_ref, "source": order.source,
            "correlation_id": entity.correlation_id, "customer_id": order.customer_id,
            "requested_ship_date": order.requested_ship_date, "priority": order.priority,
            "ship_to": order.ship_to, "lines": order.lines,
            "status": entity.status.value, "version": entity.version,
        })).one()
        if row.id is None:
            return None
        self._read[entity.id] = (entity.version, entity.status.value)
        self.track(entity)
        return [Parked(id=x["id"], kind=x["kind"], payload=x["payload"], event_id=x["event_id"],
                       order_id=x["order_id"], source=x["source"],
                       external_ref=x["external_ref"]) for x in row.parked or []]

    async def park(self, parked: Parked) -> None:
        await self.conn.execute(sa.insert(dispatch_parked).values(
            id=uuid.UUID(parked.id), kind=parked.kind, order_id=parked.order_id,
            source=parked.source, external_ref=parked.external_ref, payload=parked.payload,
            event_id=parked.event_id))

    async def applied(self, parked: list[Parked]) -> None:
        if parked:
            await self.conn.execute(
                sa.update(dispatch_parked)
                .where(dispatch_parked.c.id.in_([uuid.UUID(p.id) for p in parked]))
                .values(applied_at=sa.func.now()))

    async def get_by_ref(self, source: str, external_ref: str) -> Dispatch | None:
        return await self._one((dispatch.c.source == source)
                               & (dispatch.c.external_ref == external_ref), True)

    async def get(self, dispatch_id: uuid.UUID, *, for_update: bool = False) -> Dispatch | None:
        return await self._one(dispatch.c.id == dispatch_id, for_update)

    async def get_by_order(self, order_id: str, *, for_update: bool = False) -> Dispatch | None:
        return await self._one(dispatch.c.order_id == order_id, for_update)

    async def get_by_exception(self, exception_id: uuid.UUID) -> Dispatch | None:
        owner = sa.select(dispatch_exception.c.dispatch_id).where(
            dispatch_exception.c.id == exception_id).scalar_subquery()
        return await self._one(dispatch.c.id == owner, True)

    async def get_by_approval(self, approval_id: uuid.UUID) -> Dispatch | None:
        owner = sa.select(dispatch_approval.c.dispatch_id).where(
            dispatch_approval.c.id == approval_id).scalar_subquery()
        return await self._one(dispatch.c.id == owner, True)

    async def overdue(self, now: datetime, *, limit: int) -> list[uuid.UUID]:
        rows = await self.conn.execute(
            sa.select(dispatch_exception.c.dispatch_id)
            .where(dispatch_exception.c.status.in_(("open", "acknowledged")),
                   dispatch_exception.c.due_at <= now)
            .group_by(dispatch_exception.c.dispatch_id)
            .order_by(sa.func.min(dispatch_exception.c.due_at))
            .limit(limit))
        return [row[0] for row in rows]

    async def _one(self, where: Any, for_update: bool) -> Dispatch | None:
        if for_update:
            locked = (await self.conn.execute(_LOCK.where(where))).mappings().first()
            if locked is None:
                return None
            records = (await self.conn.execute(_RECORDS, {"dispatch_id": locked["id"]})
                       ).mappings().one()
            row: Any = {**locked, **records}
        else:
            row = (await self.conn.execute(_SELECT.where(where))).mappings().first()
            if row is None:
                return None
        entity = _to_entity(row)
        self._read[entity.id] = (entity.version, entity.status.value)
        for record in entity.exceptions:
            self._read[record.id] = (record.version, record.status.value)
        for approval in entity.approvals:
            self._read[approval.id] = (approval.version, approval.status.value)
        return self.track(entity)

    async def save(self, entity: Dispatch) -> None:
        read_version, _ = self._read[entity.id]
        if entity.version == read_version:
            return
        # The row must still be at the version the change was decided on (it is locked).
        result = await self.conn.execute(
            sa.update(dispatch)
            .where(dispatch.c.id == uuid.UUID(entity.id), dispatch.c.version == read_version)
            .values(status=entity.status.value,
                    held_from=entity.held_from.value if entity.held_from else None,
                    version=entity.version, facts=entity.facts, updated_at=sa.func.now())
        )
        _one_row(result, entity.id)
        self._read[entity.id] = (entity.version, entity.status.value)
        for record in entity.exceptions:
            await self._save_exception(entity.id, record)
        for approval in entity.approvals:
            await self._save_approval(entity.id, approval)

    async def _save_exception(self, dispatch_id: str, record: ExceptionRecord) -> None:
        before = self._read.get(record.id)
        values: dict[str, Any] = {
            "status": record.status.value, "version": record.version, "owner": record.owner,
            "escalated_from": record.escalated_from, "resolution": record.resolution,
        }
        if before is None:
            await self.conn.execute(sa.insert(dispatch_exception).values(
                id=uuid.UUID(record.id), dispatch_id=uuid.UUID(dispatch_id),
                reason_code=record.reason_code, description=record.description,
                blocking=record.blocking, due_at=record.due_at, opened_by=record.opened_by,
                **values))
        elif before[0] != record.version:
            if record.status.value != before[1] and record.status in _STATUS_AT:
                values[_STATUS_AT[record.status]] = sa.func.now()
            _one_row(await self.conn.execute(
                sa.update(dispatch_exception)
                .where(dispatch_exception.c.id == uuid.UUID(record.id),
                       dispatch_exception.c.version == before[0])
                .values(updated_at=sa.func.now(), **values)), record.id)
        self._read[record.id] = (record.version, record.status.value)

    async def _save_approval(self, dispatch_id: str, approval: Approval) -> None:
        before = self._read.get(approval.id)
        if before is None:
            await self.conn.execute(sa.insert(dispatch_approval).values(
                id=uuid.UUID(approval.id), dispatch_id=uuid.UUID(dispatch_id),
                kind=approval.kind.value, status=approval.status.value,
                requested_by=approval.requested_by,
                requested_roles=sorted(approval.requested_roles), request=approval.request,
                dispatch_version=approval.dispatch_version, version=approval.version))
        elif before[0] != approval.version:
            _one_row(await self.conn.execute(
                sa.update(dispatch_approval)
                .where(dispatch_approval.c.id == uuid.UUID(approval.id),
                       dispatch_approval.c.version == before[0])
                .values(status=approval.status.value, version=approval.version,
                        decided_by=approval.decided_by, note=approval.note,
                        decided_at=sa.func.now())), approval.id)
        self._read[approval.id] = (approval.version, approval.status.value)


def _one_row(result: Any, name: str) -> None:
    if result.rowcount != 1:
        raise RuntimeError(f"{name} changed underneath its locked update")


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
        facts=dict(row["facts"] or {}),
        exceptions=[_to_exception(x) for x in row["exceptions"]],
        approvals=[_to_approval(a) for a in row["approvals"]],
        correlation_id=row["correlation_id"],
    )


def _to_exception(x: dict[str, Any]) -> ExceptionRecord:
    return ExceptionRecord(
        id=x["id"], reason_code=x["reason_code"], description=x["description"],
        owner=x["owner"], due_at=datetime.fromisoformat(x["due_at"]), blocking=x["blocking"],
        opened_by=x["opened_by"], status=ExceptionStatus(x["status"]), version=x["version"],
        escalated_from=x["escalated_from"], resolution=x["resolution"],
    )


def _to_approval(a: dict[str, Any]) -> Approval:
    return Approval(
        id=a["id"], kind=ApprovalKind(a["kind"]), requested_by=a["requested_by"],
        requested_roles=frozenset(a["requested_roles"]), request=a["request"],
        dispatch_version=a["dispatch_version"], status=ApprovalStatus(a["status"]),
        version=a["version"], decided_by=a["decided_by"], note=a["note"],
    )
