"""HTTP edges of the erp_adapter: request → command → handler; no business rules here."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import (
    APIRouter,
    Depends,
    FastAPI,
    File,
    Form,
    HTTPException,
    Query,
    Request,
    UploadFile,
)
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from services.erp_adapter import handlers
from services.erp_adapter.config import Settings
from services.erp_adapter.domain import ExportFileError, Format, Kind, UnsupportedFormat
from services.erp_adapter.repository import fetch_run, list_log, list_runs
from shared.auth import Principal, require_roles
from shared.uow import UnitOfWork

router = APIRouter(tags=["erp"])
Importer = Annotated[Principal, Depends(require_roles("integration"))]
Reader = Annotated[Principal, Depends(require_roles("integration", "ops"))]


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


def _uow(request: Request) -> UnitOfWork:
    return request.app.state.uow  # type: ignore[no-any-return]


def _settings(request: Request) -> Settings:
    return request.app.state.runtime.settings  # type: ignore[no-any-return]


@router.post(
    "/imports",
    response_model=ImportReportOut,
    summary="Import customers or products from an ERP export (CSV or JSON)",
    responses={413: {}, 415: {}, 422: {}},
)
async def post_import(
    request: Request,
    principal: Importer,
    file: Annotated[UploadFile, File(description="the export: CSV with a header, or JSON")],
    kind: Annotated[Kind | None, Form(description="customers or products; else detected")] = None,
    dry_run: Annotated[bool, Form(description="check and count, write nothing")] = False,
) -> dict[str, Any]:
    """Rows that fail their checks are reported and skipped; the good ones are imported."""
    settings = _settings(request)
    content = await file.read(settings.import_max_bytes + 1)
    if len(content) > settings.import_max_bytes:
        raise HTTPException(413, f"the file is larger than {settings.import_max_bytes} bytes")
    outcome = await handlers.import_export(
        handlers.ImportExport(
            filename=file.filename or "upload",
            content=content,
            actor=principal.acting_as(["integration"]),
            kind=kind,
            dry_run=dry_run,
        ),
        _uow(request),
        batch_size=settings.import_batch_size,
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


@router.get("/imports", response_model=list[ImportRunOut], summary="Import runs, newest first")
async def get_imports(
    request: Request,
    _: Reader,
    kind: Kind | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[dict[str, Any]]:
    async with _uow(request).engine.connect() as conn:
        return await list_runs(conn, kind=kind.value if kind else None, limit=limit,
                               offset=offset)


@router.get("/imports/{run_id}", response_model=ImportRunDetail,
            summary="One import run with every rejected row")
async def get_import(run_id: uuid.UUID, request: Request, _: Reader) -> dict[str, Any]:
    async with _uow(request).engine.connect() as conn:
        found = await fetch_run(conn, run_id)
    if found is None:
        raise HTTPException(404, f"no import run {run_id}")
    return found


@router.get("/integration-log", response_model=list[LogEntryOut],
            summary="What crossed the ERP boundary, newest first")
async def get_integration_log(
    request: Request,
    _: Reader,
    kind: Annotated[str | None, Query(description="import, customer, product, …")] = None,
    outcome: Annotated[str | None, Query(description="created, updated, rejected, …")] = None,
    correlation_id: uuid.UUID | None = None,
    before_id: Annotated[int | None, Query(ge=1, description="page: entries older than this")]
    = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    async with _uow(request).engine.connect() as conn:
        return await list_log(conn, kind=kind, outcome=outcome, correlation_id=correlation_id,
                              before_id=before_id, limit=limit)


def install_domain_errors(app: FastAPI) -> None:
    """A file that cannot be imported at all is the caller's to fix: 415 or 422 with the reason."""

    @app.exception_handler(ExportFileError)
    async def refused(_: Request, exc: ExportFileError) -> JSONResponse:
        code = 415 if isinstance(exc, UnsupportedFormat) else 422
        return JSONResponse({"detail": str(exc), "error": exc.__class__.__name__},
                            status_code=code)
