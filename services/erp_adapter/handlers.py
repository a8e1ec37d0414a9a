"""erp_adapter use cases: each takes a command and the unit of work, and commits its effect.

Handlers read and write through the repositories of `tx`; the import run records what it
stored, and the unit of work writes those events' audit rows and `erp.*` outbox rows.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from services.erp_adapter.domain import (
    SCHEMAS,
    ExportFile,
    ExportFileError,
    ImportReport,
    ImportRun,
    Kind,
    LogEntry,
    Record,
    UnsupportedFormat,
    Upsert,
    Validated,
    plan_changes,
    read_export,
    validate,
)
from services.erp_adapter.unit_of_work import ErpUnitOfWork
from shared.contracts.envelope import Actor

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
    uow: ErpUnitOfWork,
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
                await tx.integration_log.add(
                    [LogEntry("import", outcome, cmd.filename, str(exc))], tx.correlation_id
                )
        raise

    report = ImportReport(export.filename, export.kind, export.format, len(export.rows),
                          dry_run=cmd.dry_run, rejections=checked.rejections)
    kind, records = export.kind, checked.records
    if cmd.dry_run:
        await _count_only(uow, cmd.actor, kind, records, report, batch_size, progress)
        return ImportOutcome(report, None)

    # The run id doubles as the correlation id of every event and log line the import causes.
    run = ImportRun(id=uuid.uuid4(), report=report)
    async with uow.begin(actor=cmd.actor, correlation_id=run.id) as tx:
        await tx.runs.add(run, started_by=cmd.actor)

    # One transaction per batch: a huge export neither holds one transaction open for minutes
    # nor loses what earlier batches stored when a later one fails.
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        async with uow.begin(actor=cmd.actor, correlation_id=run.id) as tx:
            await tx.master_data.lock(kind)
            plan = plan_changes(chunk, await tx.master_data.stored(kind, [r.key for r in chunk]))
            await tx.master_data.save(kind, plan.upserts, run.id)
            await tx.integration_log.add([_log_upsert(kind, u) for u in plan.upserts], run.id)
            tx.runs.resume(run).apply(plan)
        if progress:
            progress(start + len(chunk), len(records))

    entity = SCHEMAS[kind].entity
    async with uow.begin(actor=cmd.actor, correlation_id=run.id) as tx:
        run.finish()
        await tx.runs.finish(run)
        entries = [LogEntry(entity, "rejected", r.key, str(r)) for r in report.rejections]
        outcome = "completed_with_rejections" if report.rejections else "completed"
        entries.append(LogEntry("import", outcome, export.filename, report.summary()))
        await tx.integration_log.add(entries, run.id)
    return ImportOutcome(report, run.id)


async def _count_only(
    uow: ErpUnitOfWork,
    actor: Actor,
    kind: Kind,
    records: list[Record],
    report: ImportReport,
    batch_size: int,
    progress: Progress | None,
) -> None:
    """A dry run: compare with the stored copies exactly as an import would, write nothing."""
    async with uow.begin(actor=actor) as tx:
        for start in range(0, len(records), batch_size):
            chunk = records[start:start + batch_size]
            report.add(plan_changes(chunk, await tx.master_data.stored(kind, [r.key for r in chunk])))
            if progress:
                progress(start + len(chunk), len(records))


def _read_and_validate(cmd: ImportExport) -> tuple[ExportFile, Validated]:
    export = read_export(cmd.filename, cmd.content, cmd.kind)
    return export, validate(export)


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


Handler = Callable[..., Awaitable[Any]]

# Command type → handler: the edges build a command and hand it here.
HANDLERS: dict[type[Any], Handler] = {
    ImportExport: import_export,
}


async def handle(cmd: Any, uow: ErpUnitOfWork, **options: Any) -> Any:
    """Run the handler of `cmd`'s type; `options` are its knobs (batch size, progress)."""
    return await HANDLERS[type(cmd)](cmd, uow, **options)
