"""erp_adapter use cases: each takes a command and the unit of work and commits its effect."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from services.erp_adapter import publishers
from services.erp_adapter.domain import (
    SCHEMAS,
    ExportFile,
    ExportFileError,
    ImportReport,
    Kind,
    Record,
    UnsupportedFormat,
    Upsert,
    Validated,
    plan_changes,
    read_export,
    validate,
)
from services.erp_adapter.repository import (
    LogEntry,
    SqlAlchemyMasterDataRepository,
    add_log_entries,
    finish_run,
    start_run,
)
from shared.contracts.envelope import Actor
from shared.uow import ConnTransaction, UnitOfWork

Progress = Callable[[int, int], None]
"""Called with (records done, records to do) after each committed batch."""


@dataclass(frozen=True)
class ImportExport:
    """Import one ERP export file: store and publish what changed, report every refused row."""

    filename: str
    content: bytes
    actor: Actor
    kind: Kind | None = None
    dry_run: bool = False


@dataclass(frozen=True)
class ImportOutcome:
    report: ImportReport
    run_id: uuid.UUID | None  # None for a dry run: nothing was written


async def import_export(
    cmd: ImportExport,
    uow: UnitOfWork,
    *,
    batch_size: int = 500,
    progress: Progress | None = None,
) -> ImportOutcome:
    """Raises `ExportFileError` (logged, nothing imported) when the file as a whole is unusable."""
    try:
        # Parsing a large export is CPU work; keep the event loop free for consumers and HTTP.
        export, checked = await asyncio.to_thread(_read_and_validate, cmd)
    except ExportFileError as exc:
        if not cmd.dry_run:
            async with uow.begin(actor=cmd.actor) as tx:
                outcome = "unsupported" if isinstance(exc, UnsupportedFormat) else "unreadable"
                await add_log_entries(
                    tx.conn, [LogEntry("import", outcome, cmd.filename, str(exc))],
                    tx.correlation_id,
                )
        raise

    report = ImportReport(export.filename, export.kind, export.format, len(export.rows),
                          dry_run=cmd.dry_run, rejections=checked.rejections)
    records = checked.records
    if cmd.dry_run:
        await _count_only(uow, export.kind, records, report, batch_size, progress)
        return ImportOutcome(report, None)

    # The run id doubles as the correlation id of every event and log line the import causes.
    run_id = uuid.uuid4()
    async with uow.begin(actor=cmd.actor, correlation_id=run_id) as tx:
        await start_run(tx.conn, run_id, report, cmd.actor)

    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        async with uow.begin(actor=cmd.actor, correlation_id=run_id) as tx:
            repo = SqlAlchemyMasterDataRepository(tx.conn, export.kind)
            await repo.lock()
            plan = plan_changes(chunk, await repo.stored([r.key for r in chunk]))
            await repo.save(plan.upserts, run_id)
            _record_upserts(tx, export.kind, plan.upserts, run_id)
            await add_log_entries(tx.conn, [_log_upsert(export.kind, u) for u in plan.upserts],
                                  run_id)
        report.add(plan)
        if progress:
            progress(start + len(chunk), len(records))

    entity = SCHEMAS[export.kind].entity
    async with uow.begin(actor=cmd.actor, correlation_id=run_id) as tx:
        await finish_run(tx.conn, run_id, report)
        entries = [LogEntry(entity, "rejected", r.key, str(r)) for r in report.rejections]
        outcome = "completed_with_rejections" if report.rejections else "completed"
        entries.append(LogEntry("import", outcome, export.filename, report.summary()))
        await add_log_entries(tx.conn, entries, run_id)
        tx.record(
            action="erp.import.finished",
            entity_type="import_run",
            entity_id=str(run_id),
            reason=report.summary(),
            details={"filename": export.filename, "kind": export.kind.value,
                     "created": report.created, "updated": report.updated,
                     "unchanged": report.unchanged, "rejected": report.rejected},
        )
    return ImportOutcome(report, run_id)


async def _count_only(
    uow: UnitOfWork,
    kind: Kind,
    records: list[Record],
    report: ImportReport,
    batch_size: int,
    progress: Progress | None,
) -> None:
    """A dry run: compare with the stored copies exactly as an import would, write nothing."""
    async with uow.engine.connect() as conn:
        repo = SqlAlchemyMasterDataRepository(conn, kind)
        for start in range(0, len(records), batch_size):
            chunk = records[start:start + batch_size]
            report.add(plan_changes(chunk, await repo.stored([r.key for r in chunk])))
            if progress:
                progress(start + len(chunk), len(records))


def _read_and_validate(cmd: ImportExport) -> tuple[ExportFile, Validated]:
    export = read_export(cmd.filename, cmd.content, cmd.kind)
    return export, validate(export)


def _record_upserts(tx: ConnTransaction, kind: Kind, upserts: list[Upsert], run_id: uuid.UUID) -> None:
    """Audit row and outbox event of each stored change, in the transaction that stores it."""
    entity = SCHEMAS[kind].entity
    for upsert in upserts:
        tx.record(
            action=f"erp.{entity}.{'created' if upsert.is_new else 'updated'}",
            entity_type=entity,
            entity_id=upsert.record.key,
            reason="ERP import",
            details={"version": upsert.version, "import_run_id": str(run_id),
                     "changes": upsert.changes()},
        )
        tx.emit(*publishers.record_upserted(upsert.record, upsert.version))


def _log_upsert(kind: Kind, upsert: Upsert) -> LogEntry:
    schema = SCHEMAS[kind]
    if upsert.is_new:
        fields = upsert.record.fields()
        detail = ", ".join(f"{k}={v!r}" for k, v in fields.items() if k != schema.key)
        return LogEntry(schema.entity, "created", upsert.record.key, f"version 1: {detail}")
    changed = ", ".join(
        f"{name}: {old!r} → {new!r}" for name, (old, new) in upsert.changes().items()
    )
    return LogEntry(schema.entity, "updated", upsert.record.key,
                    f"version {upsert.version}: {changed}")
