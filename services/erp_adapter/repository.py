"""Persistence of ERP master copies, import runs and the integration log (SQLAlchemy Core)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.erp_adapter.domain import SCHEMAS, ImportRun, Kind, LogEntry, Stored, Upsert
from services.erp_adapter.tables import MASTER_TABLES, import_run, integration_log
from shared.contracts.envelope import ActorLike

Track = Callable[[ImportRun], ImportRun]


class MasterDataRepository(Protocol):
    """What handlers need of the stored master copies (the SQL one below; dicts in unit tests)."""

    async def lock(self, kind: Kind) -> None:
        """Serialise imports of `kind` until commit, so the versions a batch computes hold."""
        ...

    async def stored(self, kind: Kind, keys: Sequence[str]) -> dict[str, Stored]:
        """The stored copies of `keys` (absent keys are new records)."""
        ...

    async def save(self, kind: Kind, upserts: Sequence[Upsert], import_id: uuid.UUID) -> None:
        """Insert new and overwrite changed copies."""
        ...


class ImportRunRepository(Protocol):
    """Import runs; every run handed in is tracked, so what it records commits with the batch."""

    async def add(self, run: ImportRun, *, started_by: ActorLike) -> None:
        """Store a run that has started (unfinished until `finish`)."""
        ...

    def resume(self, run: ImportRun) -> ImportRun:
        """Carry on with `run` in this transaction: what it records from here commits with it."""
        ...

    async def finish(self, run: ImportRun) -> None:
        """Store the run's final counts and its rejected rows; it shows as finished from now."""
        ...


class IntegrationLogRepository(Protocol):
    """The integration log: append-only lines of what crossed the ERP boundary."""

    async def add(self, entries: Sequence[LogEntry], correlation_id: uuid.UUID | None) -> None: ...


# Arbitrary but fixed keys of the per-kind import locks (pg_advisory_xact_lock takes a bigint).
_IMPORT_LOCKS = {Kind.CUSTOMERS: 7_301_001, Kind.PRODUCTS: 7_301_002}


class SqlAlchemyMasterDataRepository:
    """The stored master copies of customers and products, on the unit of work's connection."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def lock(self, kind: Kind) -> None:
        # Row locks cannot cover records that do not exist yet; imports are rare and batched,
        # so one lock per kind costs nothing and keeps versions gap-free and unique.
        await self.conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_IMPORT_LOCKS[kind])))

    async def stored(self, kind: Kind, keys: Sequence[str]) -> dict[str, Stored]:
        schema, table = SCHEMAS[kind], MASTER_TABLES[kind]
        columns = [table.c[_column(kind, f)] for f in schema.columns]
        rows = await self.conn.execute(
            sa.select(*columns, table.c.content_hash, table.c.version)
            # `= ANY($1)`: one statement shape whatever the batch size (an IN list is not).
            .where(table.c.id == sa.any_(sa.bindparam("keys", list(keys), ARRAY(sa.Text))))
        )
        found: dict[str, Stored] = {}
        for row in rows.mappings():
            fields = {f: row[_column(kind, f)] for f in schema.columns}
            found[row["id"]] = Stored(fields, row["content_hash"], row["version"])
        return found

    async def save(self, kind: Kind, upserts: Sequence[Upsert], import_id: uuid.UUID) -> None:
        # One round trip for the whole batch (executemany).
        if not upserts:
            return
        table = MASTER_TABLES[kind]
        rows = [
            {
                **{_column(kind, f): v for f, v in u.record.fields().items()},
                "content_hash": u.content_hash,
                "version": u.version,
                "last_import_id": import_id,
            }
            for u in upserts
        ]
        insert = pg_insert(table)
        overwrite = {c: insert.excluded[c] for c in rows[0] if c != "id"}
        await self.conn.execute(
            insert.on_conflict_do_update(
                index_elements=[table.c.id], set_={**overwrite, "updated_at": sa.func.now()}
            ),
            rows,
        )


def _column(kind: Kind, field: str) -> str:
    """The master tables keep the record's key in `id`."""
    return "id" if field == SCHEMAS[kind].key else field


class SqlAlchemyImportRunRepository:
    """Import runs on the unit of work's connection; tracks every run it is handed."""

    def __init__(self, conn: AsyncConnection, track: Track) -> None:
        self.conn = conn
        self.track = track

    async def add(self, run: ImportRun, *, started_by: ActorLike) -> None:
        report = run.report
        await self.conn.execute(
            sa.insert(import_run).values(
                id=run.id,
                source_filename=report.filename,
                source_format=report.format.value,
                kind=report.kind.value,
                actor=started_by.id,
                actor_role=started_by.role,
                rows_total=report.rows_total,
            )
        )
        self.track(run)

    def resume(self, run: ImportRun) -> ImportRun:
        return self.track(run)

    async def finish(self, run: ImportRun) -> None:
        report = run.report
        await self.conn.execute(
            sa.update(import_run)
            .where(import_run.c.id == run.id)
            .values(
                finished_at=sa.func.clock_timestamp(),
                created=report.created,
                updated=report.updated,
                unchanged=report.unchanged,
                rejected=report.rejected,
                errors=[r.as_dict() for r in report.rejections],
            )
        )
        self.track(run)


class SqlAlchemyIntegrationLogRepository:
    """Appends integration-log lines on the unit of work's connection."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def add(self, entries: Sequence[LogEntry], correlation_id: uuid.UUID | None) -> None:
        if entries:
            await self.conn.execute(
                sa.insert(integration_log),
                [
                    {"direction": e.direction, "kind": e.kind, "record_key": e.record_key,
                     "outcome": e.outcome, "detail": e.detail, "correlation_id": correlation_id}
                    for e in entries
                ],
            )
