"""HTTP edges of the erp_adapter: request → command → handler; no business rules here."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile
from pydantic import BaseModel, Field

from services.erp_adapter import views
from services.erp_adapter.config import Settings
from services.erp_adapter.domain import Format, Kind
from services.erp_adapter.handlers import ImportExport, ImportOutcome, handle
from services.erp_adapter.ownership import OwnershipRegistry
from services.erp_adapter.unit_of_work import ErpUnitOfWork
from shared.auth import Principal, require_roles
from shared.web import params
from shared.web.deps import EngineDep, ReaderDep, unit_of_work
from shared.web.problems import responses

router = APIRouter(tags=["erp"])
UowDep = Annotated[ErpUnitOfWork, Depends(unit_of_work)]
# Only the integration role feeds master data in; ops may also read what crossed the boundary.
ImporterDep = Annotated[Principal, Depends(require_roles("integration"))]
IntegrationReaderDep = Annotated[Principal, Depends(require_roles("integration", "ops"))]


def settings(request: Request) -> Settings:
    """The service's settings (upload limit, batch size)."""
    found: Settings = request.app.state.runtime.settings
    return found


SettingsDep = Annotated[Settings, Depends(settings)]
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
    direction: str
    kind: str
    record_key: str | None
    outcome: str
    detail: str
    correlation_id: uuid.UUID | None


@router.post(
    "/imports",
    response_model=ImportReportOut,
    summary="Import customers or products from an ERP export (CSV or JSON)",
    responses=responses(400, 401, 403, 413, 415, 422),
)
async def post_import(
    uow: UowDep,
    config: SettingsDep,
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
            summary="What crossed the ERP boundary, newest first", responses=responses(401, 403, 422))
async def get_integration_log(
    engine: EngineDep,
    _: IntegrationReaderDep,
    kind: Annotated[str | None, params.text("import, customer, product, …")] = None,
    outcome: Annotated[str | None, params.text("created, updated, rejected, …")] = None,
    correlation_id: uuid.UUID | None = None,
    before_id: Annotated[int | None, params.integer("page: entries older than this")] = None,
    limit: Annotated[int, params.limit(1000)] = 100,
) -> list[dict[str, Any]]:
    return await views.list_log(engine, kind=kind, outcome=outcome, correlation_id=correlation_id,
                                before_id=before_id, limit=limit)


class FieldOwnerOut(BaseModel):
    entity: str
    field: str = Field(description="`lines[].<field>` for a field of each line")
    owner: str = Field(description="`erp`, or the Spine service that is the only writer")
    why: str


class OwnershipOut(BaseModel):
    version: int
    fields: list[FieldOwnerOut]


def ownership(request: Request) -> OwnershipRegistry:
    """The registry the service started with (checked at start)."""
    found: OwnershipRegistry = request.app.state.ownership
    return found


OwnershipDep = Annotated[OwnershipRegistry, Depends(ownership)]


@router.get("/ownership", response_model=OwnershipOut,
            summary="The field-ownership registry: entity × field → owning system",
            responses=responses(401, 403))
async def get_ownership(registry: OwnershipDep, _: ReaderDep) -> dict[str, Any]:
    return registry.as_dict()
