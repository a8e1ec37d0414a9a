"""HTTP edges of the dispatch service: request → command → handler; no business rules here."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from services.dispatch import handlers
from services.dispatch.domain import (
    ApprovalRequired,
    DispatchError,
    Forbidden,
    GuardFailed,
    InvalidEvidence,
    NotAllowedFromState,
    NotFound,
    StaleVersion,
    Status,
)
from services.dispatch.repository import fetch_dispatch, list_dispatches
from shared.audit import AuditEntry, history
from shared.auth import ROLES, Principal, require_roles
from shared.uow import UnitOfWork

router = APIRouter(prefix="/dispatches", tags=["dispatches"])
Reader = Annotated[Principal, Depends(require_roles(*ROLES))]


class DispatchOut(BaseModel):
    id: uuid.UUID
    order_id: str
    status: Status
    version: int
    external_ref: str | None
    source: str | None
    customer_id: str
    requested_ship_date: date
    priority: str
    ship_to: dict[str, Any]
    lines: list[dict[str, Any]]
    held_from: Status | None
    facts: dict[str, Any]
    correlation_id: uuid.UUID
    created_at: datetime
    updated_at: datetime


class TransitionIn(BaseModel):
    to: Status
    reason: str = Field(default="", max_length=2000)
    evidence: dict[str, Any] = Field(default_factory=dict)


def _uow(request: Request) -> UnitOfWork:
    return request.app.state.uow  # type: ignore[no-any-return]


@router.get("", response_model=list[DispatchOut], summary="List dispatches")
async def get_dispatches(
    request: Request,
    _: Reader,
    status: Status | None = None,
    order_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[dict[str, Any]]:
    async with _uow(request).engine.connect() as conn:
        return await list_dispatches(
            conn, status=status.value if status else None, order_id=order_id,
            limit=limit, offset=offset,
        )


@router.get("/{dispatch_id}", response_model=DispatchOut, summary="One dispatch (ETag = version)")
async def get_dispatch(
    dispatch_id: uuid.UUID, request: Request, response: Response, _: Reader
) -> dict[str, Any]:
    async with _uow(request).engine.connect() as conn:
        found = await fetch_dispatch(conn, dispatch_id)
    if found is None:
        raise HTTPException(404, f"no dispatch {dispatch_id}")
    response.headers["ETag"] = f'"{found["version"]}"'
    return found


@router.post(
    "/{dispatch_id}/transitions",
    summary="Move a dispatch to its next status",
    responses={403: {}, 404: {}, 409: {}, 412: {}, 422: {}, 428: {}},
)
async def post_transition(
    dispatch_id: uuid.UUID,
    body: TransitionIn,
    request: Request,
    principal: Reader,
    if_match: Annotated[str | None, Header(description="the ETag (version) you read")] = None,
) -> JSONResponse:
    expected = _parse_if_match(if_match)
    result = await handlers.transition_dispatch(
        handlers.TransitionDispatch(
            dispatch_id=dispatch_id,
            to=body.to,
            expected_version=expected,
            actor_id=principal.sub,
            roles=principal.roles,
            reason=body.reason,
            evidence=body.evidence,
        ),
        _uow(request),
    )
    return JSONResponse(result, headers={"ETag": f'"{result["version"]}"'})


@router.get("/{dispatch_id}/history", response_model=list[AuditEntry],
            summary="Every change of this dispatch, oldest first, from the audit log")
async def get_history(dispatch_id: uuid.UUID, request: Request, _: Reader) -> list[dict[str, Any]]:
    async with _uow(request).engine.connect() as conn:
        if await fetch_dispatch(conn, dispatch_id) is None:
            raise HTTPException(404, f"no dispatch {dispatch_id}")
        return await history(conn, "dispatch", str(dispatch_id))


def _parse_if_match(value: str | None) -> int:
    if value is None:
        raise HTTPException(428, "If-Match is required: send the ETag (version) you last read")
    text = value.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        raise HTTPException(400, f"If-Match {value!r} is not a dispatch version")
    return int(text)


_STATUS_OF: list[tuple[type[DispatchError], int]] = [
    (NotFound, 404),
    (Forbidden, 403),
    (StaleVersion, 412),
    (NotAllowedFromState, 409),
    (GuardFailed, 409),
    (ApprovalRequired, 409),
    (InvalidEvidence, 422),
]


def install_domain_errors(app: FastAPI) -> None:
    """Map each domain refusal to its HTTP status; the transaction was rolled back already."""

    @app.exception_handler(DispatchError)
    async def refused(_: Request, exc: DispatchError) -> JSONResponse:
        code = next((c for kind, c in _STATUS_OF if isinstance(exc, kind)), 400)
        body: dict[str, Any] = {"detail": str(exc), "error": exc.__class__.__name__}
        if isinstance(exc, InvalidEvidence):
            body["problems"] = exc.problems
        return JSONResponse(body, status_code=code)
