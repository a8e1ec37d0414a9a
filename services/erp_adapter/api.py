"""HTTP edges of the erp_adapter: request → command → handler; no business rules here."""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile
from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.erp_adapter import views
from services.erp_adapter.config import Settings
from services.erp_adapter.confirmations import Kind as ConfirmationKind
from services.erp_adapter.confirmations import Mode
from services.erp_adapter.confirmations import Status as ConfirmationStatus
from services.erp_adapter.conflicts import ConflictStatus, Resolution
from services.erp_adapter.domain import MAX_JSON_DEPTH, Format, Kind
from services.erp_adapter.handlers import (
    ImportExport,
    ImportOutcome,
    ReceiveRecord,
    RecordOutcome,
    ResolveConflict,
    handle,
)
from services.erp_adapter.outbound import (
    ApproveConfirmation,
    RetryConfirmation,
    SetConnectorMode,
)
from services.erp_adapter.ownership import OwnershipRegistry
from services.erp_adapter.unit_of_work import ErpUnitOfWork
from shared.auth import Principal, require_roles
from shared.web import params
from shared.web.deps import EngineDep, ReaderDep, unit_of_work
from shared.web.problems import responses

router = APIRouter(tags=["erp"])
records_router = APIRouter(prefix="/erp", tags=["erp records"])
conflicts_router = APIRouter(prefix="/conflicts", tags=["conflicts"])
UowDep = Annotated[ErpUnitOfWork, Depends(unit_of_work)]
# Only the integration role feeds master data in; ops may also read what crossed the boundary.
ImporterDep = Annotated[Principal, Depends(require_roles("integration"))]
IntegrationReaderDep = Annotated[Principal, Depends(require_roles("integration", "ops"))]


def settings(request: Request) -> Settings:
    """The service's settings (upload limit, batch size)."""
    found: Settings = request.app.state.runtime.settings
    return found


SettingsDep = Annotated[Settings, Depends(settings)]


def ownership(request: Request) -> OwnershipRegistry:
    """The registry the service started with (checked at start)."""
    found: OwnershipRegistry = request.app.state.ownership
    return found


OwnershipDep = Annotated[OwnershipRegistry, Depends(ownership)]
# Room for the multipart boundaries, part headers and the small form fields beside the file.
UPLOAD_OVERHEAD_BYTES = 64 * 1024


class RowErrorOut(BaseModel):
    row: int
    key: str | None
    reasons: list[str]
    message: str


class ImportReportOut(BaseModel):
    id: uuid.UUID | None
    filename: str
    kind: Kind
    format: Format
    dry_run: bool
    rows_total: int
    created: int
    updated: int
    unchanged: int
    rejected: int
    errors: list[RowErrorOut]
    summary: str


class ImportRunOut(BaseModel):
    id: uuid.UUID
    source_filename: str
    source_format: Format
    kind: Kind
    actor: str
    actor_role: str
    started_at: datetime
    finished_at: datetime | None  # None: the run has not finished (or died half-way)
    rows_total: int
    created: int
    updated: int
    unchanged: int
    rejected: int


class ImportRunDetail(ImportRunOut):
    errors: list[RowErrorOut]


class LogEntryOut(BaseModel):
    id: int
    occurred_at: datetime
    direction: str = Field(description="in: from the ERP; out: to the ERP")
    kind: str = Field(description="the entity (customer, dispatch, confirmation, …) or import")
    record_key: str | None = Field(description="the entity's id (filter: entity_id)")
    outcome: str = Field(description="the exchange's status (filter: status)")
    detail: str
    correlation_id: uuid.UUID | None
    connector: str | None = Field(description="file-import, http-records (in); file, http (out)")
    order_id: str | None
    payload: Any = Field(description="what crossed; null when only its digest is kept")
    payload_sha256: str | None
    request: dict[str, Any] | None
    response: dict[str, Any] | None
    attempts: int
    last_error: str | None


@router.post(
    "/imports",
    response_model=ImportReportOut,
    summary="Import customers or products from an ERP export (CSV or JSON)",
    responses=responses(400, 401, 403, 413, 415, 422),
)
async def post_import(
    uow: UowDep,
    config: SettingsDep,
    registry: OwnershipDep,
    principal: ImporterDep,
    file: Annotated[UploadFile, File(description="the export: CSV with a header, or JSON")],
    kind: Annotated[Kind | None, Form(description="customers or products; else detected")] = None,
    dry_run: Annotated[bool, Form(description="check and count, write nothing")] = False,
) -> dict[str, Any]:
    """Rows that fail their checks are reported and skipped; the good ones are imported."""
    content = await file.read(config.import_max_bytes + 1)
    if len(content) > config.import_max_bytes:
        raise HTTPException(413, f"the file is larger than {config.import_max_bytes} bytes")
    outcome: ImportOutcome = await handle(
        ImportExport(
            filename=file.filename or "upload",
            content=content,
            actor=principal.acting_as(["integration"]),
            kind=kind,
            dry_run=dry_run,
        ),
        uow,
        batch_size=config.import_batch_size,
        ownership=registry,
    )
    report = outcome.report
    return {
        "id": outcome.run_id,
        "filename": report.filename,
        "kind": report.kind,
        "format": report.format,
        "dry_run": report.dry_run,
        "rows_total": report.rows_total,
        "created": report.created,
        "updated": report.updated,
        "unchanged": report.unchanged,
        "rejected": report.rejected,
        "errors": [r.as_dict() for r in report.rejections],
        "summary": report.summary(),
    }


@router.get("/imports", response_model=list[ImportRunOut], summary="Import runs, newest first",
            responses=responses(401, 403, 422))
async def get_imports(
    engine: EngineDep,
    _: IntegrationReaderDep,
    kind: Kind | None = None,
    limit: Annotated[int, params.limit(500)] = 50,
    offset: params.Offset = 0,
) -> list[dict[str, Any]]:
    return await views.list_runs(engine, kind=kind.value if kind else None, limit=limit,
                                 offset=offset)


@router.get("/imports/{run_id}", response_model=ImportRunDetail,
            summary="One import run with every rejected row", responses=responses(401, 403, 404, 422))
async def get_import(run_id: uuid.UUID, engine: EngineDep, _: IntegrationReaderDep) -> dict[str, Any]:
    found = await views.fetch_run(engine, run_id)
    if found is None:
        raise HTTPException(404, f"no import run {run_id}")
    return found


@router.get("/integration-log", response_model=list[LogEntryOut],
            summary="Every exchange with the ERP, in either direction, newest first",
            responses=responses(401, 403, 422))
async def get_integration_log(
    engine: EngineDep,
    _: IntegrationReaderDep,
    direction: Literal["in", "out"] | None = None,
    entity_id: Annotated[str | None, params.text("the id of the record it was about")] = None,
    status: Annotated[str | None, params.text("created, conflict, posted, failed, …")] = None,
    correlation_id: uuid.UUID | None = None,
    connector: Annotated[str | None, params.text("file-import, http-records, file, http")] = None,
    order_id: Annotated[str | None, params.text()] = None,
    kind: Annotated[str | None, params.text("import, customer, product, dispatch, …")] = None,
    outcome: Annotated[str | None, params.text("the same as status (its older name)")] = None,
    before_id: Annotated[int | None, params.integer("page: entries older than this")] = None,
    limit: Annotated[int, params.limit(1000)] = 100,
    offset: params.Offset = 0,
) -> list[dict[str, Any]]:
    if status is not None and outcome is not None and status != outcome:
        return []  # two different statuses at once: nothing has both
    return await views.list_log(
        engine, limit=limit, offset=offset, before_id=before_id, direction=direction,
        record_key=entity_id, outcome=status or outcome, correlation_id=correlation_id,
        connector=connector, order_id=order_id, kind=kind)


# ---------------------------------------------------------------------------- records, conflicts


def _plain_json(value: Any) -> Any:
    """Refuse what PostgreSQL's jsonb cannot keep (NUL, NaN) or nests past any flat record."""
    try:
        text = json.dumps(value, allow_nan=False)
    except ValueError as exc:
        raise ValueError("values must be plain JSON (no NaN or Infinity)") from exc
    if "\\u0000" in text:
        raise ValueError(params.PRINTABLE_HINT)
    if _nesting(value) > MAX_JSON_DEPTH:
        raise ValueError(f"values nest at most {MAX_JSON_DEPTH} levels deep")
    return value


def _nesting(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth <= MAX_JSON_DEPTH and isinstance(item, dict | list):
            stack += [(v, depth + 1) for v in (item.values() if isinstance(item, dict) else item)]
    return deepest


FieldName = Annotated[str, Field(min_length=1, max_length=100, pattern=params.PRINTABLE)]


class ErpRecordIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    entity: str = Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$",
                        description="customer, product, order, dispatch (GET /ownership)")
    id: str = Field(min_length=1, max_length=200, pattern=params.PRINTABLE,
                    description="the record's id: customer_id, product_id, order_id, dispatch_id")
    fields: dict[FieldName, Any] = Field(
        min_length=1, max_length=200,
        description="field → value; a line's field as lines[<line_no>].<field>")

    @field_validator("fields")
    @classmethod
    def _storable(cls, value: dict[str, Any]) -> dict[str, Any]:
        return dict(_plain_json(value))


class ConflictNoteOut(BaseModel):
    field: str
    outcome: Literal["detected", "repeated", "reopened", "agrees"]
    conflict_id: uuid.UUID | None = Field(description="null when the ERP agrees with Spine")
    spine_owner: str


class RecordOutcomeOut(BaseModel):
    entity: str
    id: str
    applied: Literal["created", "updated", "unchanged", "none"] = Field(
        description="what became of the fields the ERP owns (none: it sent none)")
    conflicts: list[ConflictNoteOut] = Field(
        description="each field Spine owns that the record carried: never applied")
    correlation_id: uuid.UUID


@records_router.post(
    "/records", response_model=RecordOutcomeOut,
    summary="The ERP sends one record: its own fields applied, Spine's fields become conflicts",
    responses=responses(400, 401, 403, 413, 422))
async def post_record(body: ErpRecordIn, uow: UowDep, registry: OwnershipDep,
                      principal: ImporterDep) -> dict[str, Any]:
    """A field the registry does not name refuses the whole record (422, logged)."""
    outcome: RecordOutcome = await handle(ReceiveRecord(
        entity=body.entity, entity_id=body.id, fields=body.fields,
        actor=principal.acting_as(["integration"])), uow, ownership=registry)
    return {"entity": outcome.entity, "id": outcome.entity_id, "applied": outcome.applied,
            "conflicts": [asdict(n) for n in outcome.conflicts],
            "correlation_id": outcome.correlation_id}


class ConflictOut(BaseModel):
    id: uuid.UUID
    entity: str
    entity_id: str
    field: str
    erp_value: Any = Field(description="what the ERP sent")
    spine_value: Any = Field(description="Spine's value when spine_value_known; else null")
    spine_value_known: bool = Field(
        description="false: the adapter keeps no copy of it (order fields, a dispatch it has "
                    "not heard of): spine_owner has the value")
    spine_owner: str
    erp_record: dict[str, Any] = Field(description="the whole record the value came in")
    connector: str
    order_id: str | None
    status: ConflictStatus
    resolution: Resolution | None
    reason: str | None
    resolved_by: str | None
    occurrences: int = Field(description="how often the ERP sent this value")
    version: int
    correlation_id: uuid.UUID
    detected_at: datetime
    last_seen_at: datetime
    resolved_at: datetime | None


class ResolveConflictIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    resolution: Resolution = Field(description="keep_spine: Spine's value stands; "
                                               "erp_corrected: the ERP fixed its side")
    reason: str = Field(min_length=1, max_length=2000, pattern=params.PRINTABLE_MULTILINE)


@conflicts_router.get("", response_model=list[ConflictOut],
                      summary="ERP values for fields Spine owns, never applied; newest first",
                      responses=responses(401, 403, 422))
async def get_conflicts(
    engine: EngineDep,
    _: IntegrationReaderDep,
    status: ConflictStatus | None = None,
    entity: Annotated[str | None, params.text()] = None,
    entity_id: Annotated[str | None, params.text()] = None,
    field: Annotated[str | None, params.text()] = None,
    spine_owner: Annotated[str | None, params.text()] = None,
    order_id: Annotated[str | None, params.text()] = None,
    limit: Annotated[int, params.limit(500)] = 50,
    offset: params.Offset = 0,
) -> list[dict[str, Any]]:
    return await views.list_conflicts(
        engine, limit=limit, offset=offset, status=status.value if status else None,
        entity=entity, entity_id=entity_id, field=field, spine_owner=spine_owner,
        order_id=order_id)


@conflicts_router.get("/{conflict_id}", response_model=ConflictOut, summary="One conflict",
                      responses=responses(401, 403, 404, 422))
async def get_conflict(conflict_id: uuid.UUID, engine: EngineDep,
                       _: IntegrationReaderDep) -> dict[str, Any]:
    found = await views.fetch_conflict(engine, conflict_id)
    if found is None:
        raise HTTPException(404, f"no conflict {conflict_id}")
    return found


@conflicts_router.post("/{conflict_id}/resolve", response_model=ConflictOut,
                       summary="Decide a conflict: keep_spine or erp_corrected, with a reason",
                       responses=responses(400, 401, 403, 404, 409, 413, 422))
async def post_resolve_conflict(conflict_id: uuid.UUID, body: ResolveConflictIn, uow: UowDep,
                                engine: EngineDep, principal: ImporterDep) -> dict[str, Any]:
    await handle(ResolveConflict(conflict_id=conflict_id, resolution=body.resolution,
                                 reason=body.reason,
                                 actor=principal.acting_as(["integration"])), uow)
    found = await views.fetch_conflict(engine, conflict_id)
    assert found is not None  # nosec B101 # just resolved, and nothing deletes conflicts
    return found


class FieldOwnerOut(BaseModel):
    entity: str
    field: str = Field(description="`lines[].<field>` for a field of each line")
    owner: str = Field(description="`erp`, or the Spine service that is the only writer")
    why: str


class OwnershipOut(BaseModel):
    version: int
    fields: list[FieldOwnerOut]




@router.get("/ownership", response_model=OwnershipOut,
            summary="The field-ownership registry: entity × field → owning system",
            responses=responses(401, 403))
async def get_ownership(registry: OwnershipDep, _: ReaderDep) -> dict[str, Any]:
    return registry.as_dict()


class TimelineOut(BaseModel):
    order_id: str
    service: Literal["erp_adapter"]
    entries: list[LogEntryOut] = Field(description="integration-log rows of the order, oldest "
                                                   "first")


@router.get("/timeline", response_model=TimelineOut,
            summary="The erp_adapter's part of one order's timeline: what crossed the ERP "
                    "boundary about it", responses=responses(401, 403, 422))
async def get_timeline(
    engine: EngineDep,
    _: IntegrationReaderDep,
    order_id: Annotated[str, params.text("the order's id", max_length=200)],
    limit: Annotated[int, params.limit(1000)] = 500,
    offset: params.Offset = 0,
) -> dict[str, Any]:
    entries = await views.list_log(engine, limit=limit, offset=offset, oldest_first=True,
                                   order_id=order_id)
    return {"order_id": order_id, "service": "erp_adapter", "entries": entries}


# --- outbound confirmations and the connectors' modes ----------------------------------------

outbound_router = APIRouter(tags=["confirmations"])


def connector_in_use(request: Request) -> str:
    """The connector the service sends through (SPINE_ERP_CONNECTOR)."""
    found: str = request.app.state.connector
    return found


ConnectorInUseDep = Annotated[str, Depends(connector_in_use)]


class ConnectorOut(BaseModel):
    name: str
    mode: Mode = Field(description="shadow: record, send nothing; approve: wait for "
                                   "POST /confirmations/{id}/approve; auto: send")
    in_use: bool = Field(description="the connector this service sends through")
    updated_at: datetime
    updated_by: str


class ConnectorModeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Mode


class ConfirmationOut(BaseModel):
    id: uuid.UUID
    event_id: uuid.UUID = Field(description="the dispatch event confirmed: the idempotency key "
                                            "the ERP sees")
    kind: ConfirmationKind
    dispatch_id: str
    order_id: str
    dispatch_version: int
    connector: str
    status: ConfirmationStatus
    document: dict[str, Any] = Field(description="exactly what is (or, in shadow, would be) sent")
    attempts: int
    last_error: str | None
    response: dict[str, Any] | None
    approved_by: str | None
    correlation_id: uuid.UUID
    next_attempt_at: datetime
    created_at: datetime
    updated_at: datetime
    posted_at: datetime | None
    acknowledged_at: datetime | None


def _connector_out(row: dict[str, Any], in_use: str) -> dict[str, Any]:
    return {**row, "in_use": row["name"] == in_use}


@outbound_router.get("/connectors", response_model=list[ConnectorOut],
                     summary="The outbound connectors and the mode of each",
                     responses=responses(401, 403))
async def get_connectors(engine: EngineDep, _: IntegrationReaderDep,
                         in_use: ConnectorInUseDep) -> list[dict[str, Any]]:
    return [_connector_out(r, in_use) for r in await views.list_connectors(engine)]


@outbound_router.put("/connectors/{name}", response_model=ConnectorOut,
                     summary="Switch a connector's mode; takes effect without a restart",
                     responses=responses(400, 401, 403, 404, 413, 422))
async def put_connector(name: str, body: ConnectorModeIn,
                        uow: UowDep, engine: EngineDep, principal: ImporterDep,
                        in_use: ConnectorInUseDep) -> dict[str, Any]:
    await handle(SetConnectorMode(name=name, mode=body.mode,
                                  actor=principal.acting_as(["integration"])), uow)
    found = [r for r in await views.list_connectors(engine) if r["name"] == name]
    return _connector_out(found[0], in_use)


@outbound_router.get("/confirmations", response_model=list[ConfirmationOut],
                     summary="Delivery confirmations to the ERP, newest first",
                     responses=responses(401, 403, 422))
async def get_confirmations(
    engine: EngineDep,
    _: IntegrationReaderDep,
    status: ConfirmationStatus | None = None,
    dispatch_id: Annotated[str | None, params.text()] = None,
    order_id: Annotated[str | None, params.text()] = None,
    limit: Annotated[int, params.limit(500)] = 50,
    offset: params.Offset = 0,
) -> list[dict[str, Any]]:
    return await views.list_confirmations(
        engine, limit=limit, offset=offset, status=status.value if status else None,
        dispatch_id=dispatch_id, order_id=order_id)


@outbound_router.get("/confirmations/{confirmation_id}", response_model=ConfirmationOut,
                     summary="One confirmation", responses=responses(401, 403, 404, 422))
async def get_confirmation(confirmation_id: uuid.UUID, engine: EngineDep,
                           _: IntegrationReaderDep) -> dict[str, Any]:
    found = await views.fetch_confirmation(engine, confirmation_id)
    if found is None:
        raise HTTPException(404, f"no confirmation {confirmation_id}")
    return found


@outbound_router.post("/confirmations/{confirmation_id}/approve",
                      response_model=ConfirmationOut,
                      summary="Let a confirmation awaiting approval be sent",
                      responses=responses(401, 403, 404, 409, 422))
async def post_approve_confirmation(confirmation_id: uuid.UUID, uow: UowDep, engine: EngineDep,
                                    principal: ImporterDep) -> dict[str, Any]:
    await handle(ApproveConfirmation(confirmation_id=confirmation_id,
                                     actor=principal.acting_as(["integration"])), uow)
    return await get_confirmation(confirmation_id, engine, principal)


@outbound_router.post("/confirmations/{confirmation_id}/retry",
                      response_model=ConfirmationOut,
                      summary="Send a failed confirmation again",
                      responses=responses(401, 403, 404, 409, 422))
async def post_retry_confirmation(confirmation_id: uuid.UUID, uow: UowDep, engine: EngineDep,
                                  principal: ImporterDep) -> dict[str, Any]:
    await handle(RetryConfirmation(confirmation_id=confirmation_id,
                                   actor=principal.acting_as(["integration"])), uow)
    return await get_confirmation(confirmation_id, engine, principal)


class DifferenceOut(BaseModel):
    field: str = Field(description="`lines[<line_no>].<field>` for a field of one line")
    spine: Any = Field(description="Spine's value (the dispatch replica)")
    erp: Any = Field(description="what the ERP acknowledged")


class FindingOut(BaseModel):
    finding: Literal["missing_in_erp", "missing_in_spine", "differs"]
    dispatch_id: str | None
    order_id: str | None
    confirmation_status: str | None = Field(description="the newest confirmation's status")
    idempotency_key: str | None
    differences: list[DifferenceOut]
    detail: str


class ReconciliationOut(BaseModel):
    shipped: int = Field(description="dispatches Spine shipped (as the adapter learned them)")
    acknowledged: int = Field(description="dispatches with a confirmation the ERP acknowledged")
    in_agreement: int
    findings: list[FindingOut] = Field(description="the page `limit`/`offset` asked for")


@outbound_router.get("/reconciliation", response_model=ReconciliationOut,
                     summary="What Spine shipped against what the ERP acknowledged, field by field",
                     responses=responses(401, 403, 422))
async def get_reconciliation(
    engine: EngineDep,
    _: IntegrationReaderDep,
    finding: Literal["missing_in_erp", "missing_in_spine", "differs"] | None = None,
    limit: Annotated[int, params.limit(500)] = 100,
    offset: params.Offset = 0,
) -> dict[str, Any]:
    report = await views.reconciliation(engine)
    found = [asdict(f) for f in report.findings if finding is None or f.finding == finding]
    return {"shipped": report.shipped, "acknowledged": report.acknowledged,
            "in_agreement": report.in_agreement, "findings": found[offset:offset + limit]}
