"""erp_adapter use cases: each takes a command and the unit of work, and commits its effect.

Handlers read and write through the repositories of `tx`; the import run records what it
stored, and the unit of work writes those events' audit rows and `erp.*` outbox rows.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from services.erp_adapter import outbound
from services.erp_adapter.conflicts import Conflict, ConflictStatus, Resolution, agrees
from services.erp_adapter.domain import (
    KIND_OF_ENTITY,
    SCHEMAS,
    ExportFile,
    ExportFileError,
    ImportReport,
    ImportRun,
    Kind,
    LogEntry,
    Record,
    RecordReceipt,
    UnsupportedFormat,
    Upsert,
    Validated,
    build_record,
    plan_changes,
    read_export,
    validate,
)
from services.erp_adapter.ownership import FieldValue, OwnershipRegistry, check_record
from services.erp_adapter.unit_of_work import ErpTransaction, ErpUnitOfWork
from shared import workflow
from shared.contracts.envelope import Actor

# How a record crossed into Spine, as the integration log and the conflicts name it.
FILE_IMPORT = "file-import"
HTTP_RECORDS = "http-records"

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


@functools.cache
def bundled_ownership() -> OwnershipRegistry:
    """The registry shipped with the service, for callers that were given none."""
    from services.erp_adapter.config import load_ownership  # a file read: only when needed

    return load_ownership()


async def import_export(
    cmd: ImportExport,
    uow: ErpUnitOfWork,
    *,
    batch_size: int = 500,
    progress: Progress | None = None,
    ownership: OwnershipRegistry | None = None,
) -> ImportOutcome:
    """Raises `ExportFileError` (logged, nothing imported) when the file as a whole is unusable.

    Columns beyond the ones the import applies are checked against `ownership`: a value for a
    field Spine owns becomes a conflict, never applied; a column the registry does not name is
    ignored, as it always was.
    """
    registry = ownership or bundled_ownership()
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
            await _conflicts_of_rows(tx, registry, kind, chunk, checked.extras)
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


async def _conflicts_of_rows(tx: ErpTransaction, registry: OwnershipRegistry, kind: Kind,
                             records: list[Record], extras: dict[str, dict[str, Any]]) -> None:
    entity = SCHEMAS[kind].entity
    for record in records:
        other = extras.get(record.key)
        if not other:
            continue
        spine_owned = check_record(registry, entity, other).spine_owned
        if spine_owned:
            erp_record = {**record.fields(), **other}
            notes = await detect_conflicts(tx, entity, record.key, spine_owned, erp_record,
                                           FILE_IMPORT)
            await tx.integration_log.add([LogEntry(
                entity, "conflict", record.key, "; ".join(n.describe() for n in notes),
                connector=FILE_IMPORT, payload=erp_record)], tx.correlation_id)


@dataclass(frozen=True)
class ConflictNote:
    """What became of one Spine-owned field an ERP record carried."""

    field: str
    outcome: str  # detected, repeated, reopened, agrees (the ERP repeats Spine's value)
    conflict_id: uuid.UUID | None
    spine_owner: str

    def describe(self) -> str:
        if self.conflict_id is None:
            return f"{self.field}: agrees with {self.spine_owner}"
        return f"{self.field}: {self.spine_owner} owns it, conflict {self.conflict_id} {self.outcome}"


async def detect_conflicts(tx: ErpTransaction, entity: str, entity_id: str,
                           spine_owned: list[FieldValue], erp_record: dict[str, Any],
                           connector: str) -> list[ConflictNote]:
    """Each Spine-owned value the ERP sent: a new conflict, or one more sighting of it."""
    notes: list[ConflictNote] = []
    order_id = await tx.spine_values.order_of(entity, entity_id)
    for sent in spine_owned:
        spine = await tx.spine_values.value_of(entity, entity_id, sent.field)
        if agrees(sent.value, spine):
            notes.append(ConflictNote(sent.field, "agrees", None, sent.owner))
            continue
        found = await tx.conflicts.find(entity, entity_id, sent.field, sent.value)
        if found is None:
            new = Conflict.detect(entity=entity, entity_id=entity_id, field=sent.field,
                                  erp_value=sent.value, spine=spine, spine_owner=sent.owner,
                                  erp_record=erp_record, connector=connector,
                                  order_id=order_id, correlation_id=tx.correlation_id)
            if await tx.conflicts.add(new):
                notes.append(ConflictNote(sent.field, "detected", new.id, sent.owner))
                continue
            # The same conflict was stored by a transaction that committed meanwhile.
            found = await tx.conflicts.find(entity, entity_id, sent.field, sent.value)
            assert found is not None  # nosec B101 # the unique key said it exists
        was_open = found.status is ConflictStatus.OPEN
        found.seen_again(erp_record, spine)
        await tx.conflicts.update(found)
        reopened = not was_open and found.status is ConflictStatus.OPEN
        notes.append(ConflictNote(sent.field, "reopened" if reopened else "repeated", found.id,
                                  sent.owner))
    return notes


@dataclass(frozen=True)
class ReceiveRecord:
    """One record the ERP sends on its own (`POST /erp/records`): checked field by field."""

    entity: str
    entity_id: str
    fields: dict[str, Any]
    actor: Actor


@dataclass(frozen=True)
class RecordOutcome:
    entity: str
    entity_id: str
    applied: str  # created, updated, unchanged, or none (it carried no field the ERP owns)
    conflicts: list[ConflictNote]
    correlation_id: str  # what its log row and its conflicts carry


async def receive_record(cmd: ReceiveRecord, uow: ErpUnitOfWork, *,
                         ownership: OwnershipRegistry | None = None) -> RecordOutcome:
    """Apply what the ERP owns, turn what Spine owns into conflicts; refuse unknown fields.

    A refused record changes nothing but leaves its integration-log row (nothing crosses the
    boundary without one); the refusal raises `InvalidInput` with every reason.
    """
    registry = ownership or bundled_ownership()
    problems: list[str] = []
    if cmd.entity not in registry.entities():
        problems.append(f"entity: {cmd.entity!r} is not in the ownership registry "
                        f"({', '.join(registry.entities())})")
        checked = None
    else:
        checked = check_record(registry, cmd.entity, cmd.fields)
        problems += [f"fields.{name}: not in the ownership registry for {cmd.entity}; ask for "
                     "it to be added before sending it" for name in checked.unknown]
    record: Record | None = None
    kind = KIND_OF_ENTITY.get(cmd.entity)
    if checked is not None and kind is not None and checked.erp_owned:
        record, bad = build_record(kind, cmd.entity_id, checked.erp_owned)
        problems += [f"fields.{p}" for p in bad]
    request = {"method": "POST", "path": "/erp/records"}
    if problems or checked is None:
        async with uow.begin(actor=cmd.actor) as tx:
            await tx.integration_log.add([LogEntry(
                cmd.entity, "rejected", cmd.entity_id, "; ".join(problems),
                connector=HTTP_RECORDS, payload=cmd.fields, request=request,
                response={"status": 422})], tx.correlation_id)
        raise workflow.InvalidInput(problems, detail=f"{cmd.entity} {cmd.entity_id} not taken: "
                                    + "; ".join(problems))

    async with uow.begin(actor=cmd.actor) as tx:
        applied = "none"
        if record is not None and kind is not None:
            await tx.master_data.lock(kind)
            plan = plan_changes([record], await tx.master_data.stored(kind, [record.key]))
            await tx.master_data.save(kind, plan.upserts, None)
            tx.track(RecordReceipt(uuid.uuid4())).apply(kind, plan)
            applied = ("unchanged" if not plan.upserts else
                       "created" if plan.upserts[0].is_new else "updated")
        notes = await detect_conflicts(tx, cmd.entity, cmd.entity_id, checked.spine_owned,
                                       dict(cmd.fields), HTTP_RECORDS)
        in_conflict = [n for n in notes if n.conflict_id is not None]
        outcome = ("conflict" if in_conflict and applied == "none" else
                   f"{applied}_with_conflicts" if in_conflict else applied)
        detail = "; ".join([f"ERP-owned fields: {applied}"] + [n.describe() for n in notes])
        await tx.integration_log.add([LogEntry(
            cmd.entity, outcome, cmd.entity_id, detail, connector=HTTP_RECORDS,
            order_id=await tx.spine_values.order_of(cmd.entity, cmd.entity_id),
            payload=cmd.fields, request=request,
            response={"status": 200, "applied": applied,
                      "conflicts": [str(n.conflict_id) for n in in_conflict]})],
            tx.correlation_id)
        return RecordOutcome(cmd.entity, cmd.entity_id, applied, notes, str(tx.correlation_id))


@dataclass(frozen=True)
class ResolveConflict:
    """A person decides a conflict: Spine's value stands, or the ERP corrected its side."""

    conflict_id: uuid.UUID
    resolution: Resolution
    reason: str
    actor: Actor


async def resolve_conflict(cmd: ResolveConflict, uow: ErpUnitOfWork) -> Conflict:
    async with uow.begin(actor=cmd.actor) as tx:
        found = await tx.conflicts.get(cmd.conflict_id)
        if found is None:
            raise workflow.NotFound(f"no conflict {cmd.conflict_id}")
        found.resolve(cmd.resolution, cmd.reason, cmd.actor.id)
        await tx.conflicts.update(found)
        return found


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
    ReceiveRecord: receive_record,
    ResolveConflict: resolve_conflict,
    outbound.RecordShipment: outbound.record_shipment,
    outbound.RecordCorrection: outbound.record_correction,
    outbound.ApproveConfirmation: outbound.approve_confirmation,
    outbound.RetryConfirmation: outbound.retry_confirmation,
    outbound.SetConnectorMode: outbound.set_connector_mode,
}


async def handle(cmd: Any, uow: ErpUnitOfWork, **options: Any) -> Any:
    """Run the handler of `cmd`'s type; `options` are its knobs (batch size, progress)."""
    return await HANDLERS[type(cmd)](cmd, uow, **options)
