"""Persistence of ERP master copies, import runs and the integration log (SQLAlchemy Core)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.erp_adapter.domain import SCHEMAS, ImportReport, Kind, Stored, Upsert
from services.erp_adapter.tables import MASTER_TABLES, import_run, integration_log
from shared.contracts.envelope import Actor

# Arbitrary but fixed keys of the per-kind import locks (pg_advisory_xact_lock takes a bigint).
_IMPORT_LOCKS = {Kind.CUSTOMERS: 7_301_001, Kind.PRODUCTS: 7_301_002}


class SqlAlchemyMasterDataRepository:
    """The stored master copies of one kind of record, on the unit of work's connection."""

    def __init__(self, conn: AsyncConnection, kind: Kind) -> None:
        self.conn = conn
        self.kind = kind
        self.schema = SCHEMAS[kind]
        self.table = MASTER_TABLES[kind]

    async def lock(self) -> None:
        """Serialise imports of this kind until commit, so the versions a batch computes hold.

        Row locks cannot cover records that do not exist yet; imports are rare and batched,
        so one lock per kind costs nothing and keeps versions gap-free and unique.
        """
        await self.conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_IMPORT_LOCKS[self.kind])))

    async def stored(self, keys: Sequence[str]) -> dict[str, Stored]:
        """The stored copies of `keys` (absent keys are new records), in one query."""
        columns = [self.table.c[self._column(f)] for f in self.schema.columns]
        rows = await self.conn.execute(
            sa.select(*columns, self.table.c.content_hash, self.table.c.version)
            # `= ANY($1)`: one statement shape whatever the batch size (an IN list is not).
            .where(self.table.c.id == sa.any_(sa.bindparam("keys", list(keys), ARRAY(sa.Text))))
        )
        found: dict[str, Stored] = {}
        for row in rows.mappings():
            fields = {f: row[self._column(f)] for f in self.schema.columns}
            found[row["id"]] = Stored(fields, row["content_hash"], row["version"])
        return found

    async def save(self, upserts: Sequence[Upsert], import_id: uuid.UUID) -> None:
        """Insert new and overwrite changed copies in one round trip (executemany)."""
        if not upserts:
            return
        rows = [
            {
                **{self._column(f): v for f, v in u.record.fields().items()},
                "content_hash": u.content_hash,
                "version": u.version,
                "last_import_id": import_id,
            }
            for u in upserts
        ]
        insert = pg_insert(self.table)
        overwrite = {c: insert.excluded[c] for c in rows[0] if c != "id"}
        await self.conn.execute(
            insert.on_conflict_do_update(
                index_elements=[self.table.c.id], set_={**overwrite, "updated_at": sa.func.now()}
            ),
            rows,
        )

    def _column(self, field: str) -> str:
        return "id" if field == self.schema.key else field


@dataclass(frozen=True)
class LogEntry:
    """One line of the integration log."""

    kind: str
    outcome: str
    record_key: str | None = None
    detail: str = ""
    direction: str = "in"


async def add_log_entries(
    conn: AsyncConnection, entries: Sequence[LogEntry], correlation_id: uuid.UUID | None
) -> None:
    if entries:
        await conn.execute(
            sa.insert(integration_log),
            [
                {"direction": e.direction, "kind": e.kind, "record_key": e.record_key,
                 "outcome": e.outcome, "detail": e.detail, "correlation_id": correlation_id}
                for e in entries
            ],
        )


async def start_run(
    conn: AsyncConnection, run_id: uuid.UUID, report: ImportReport, actor: Actor
) -> None:
    await conn.execute(
        sa.insert(import_run).values(
            id=run_id,
            source_filename=report.filename,
            source_format=report.format.value,
            kind=report.kind.value,
            actor=actor.id,
            actor_role=actor.role,
            rows_total=report.rows_total,
        )
    )


async def finish_run(conn: AsyncConnection, run_id: uuid.UUID, report: ImportReport) -> None:
    await conn.execute(
        sa.update(import_run)
        .where(import_run.c.id == run_id)
        .values(
            finished_at=sa.func.clock_timestamp(),
            created=report.created,
            updated=report.updated,
            unchanged=report.unchanged,
            rejected=report.rejected,
            errors=[r.as_dict() for r in report.rejections],
        )
    )


async def fetch_run(conn: AsyncConnection, run_id: uuid.UUID) -> dict[str, Any] | None:
    found = (await conn.execute(sa.select(import_run).where(import_run.c.id == run_id))).mappings()
    row = found.first()
    return dict(row) if row else None


async def list_runs(
    conn: AsyncConnection, *, kind: str | None, limit: int, offset: int
) -> list[dict[str, Any]]:
    query = sa.select(*(c for c in import_run.c if c.name != "errors"))
    if kind:
        query = query.where(import_run.c.kind == kind)
    rows = await conn.execute(
        query.order_by(import_run.c.started_at.desc(), import_run.c.id).limit(limit).offset(offset)
    )
    return [dict(r) for r in rows.mappings()]


async def list_log(
    conn: AsyncConnection,
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
    rows = await conn.execute(query.order_by(integration_log.c.id.desc()).limit(limit))
    return [dict(r) for r in rows.mappings()]
