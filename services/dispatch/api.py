"""HTTP edges of the dispatch service: request → command → handler; no business rules here."""

from __future__ import annotations

import uuid
from dataclasses import asdict
from datetime import date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from services.dispatch import views
from services.dispatch.domain import Status
from services.dispatch.handlers import Moved, TransitionDispatch, handle
from services.dispatch.unit_of_work import DispatchUnitOfWork
from shared.audit import AuditEntry
from shared.tokens import ROLES
from shared.web import params
from shared.web.deps import EngineDep, IfMatchHeader, ReaderDep, parse_if_match, unit_of_work, with_etag
from shared.web.problems import responses

router = APIRouter(prefix="/dispatches", tags=["dispatches"])
UowDep = Annotated[DispatchUnitOfWork, Depends(unit_of_work)]
# Roles a person's token may carry; anything else in a token (e.g. "system") grants nothing.
PERSON_ROLES = frozenset(ROLES)


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
    model_config = ConfigDict(extra="forbid")

    to: Status
    reason: str = Field(default="", max_length=2000)
    evidence: dict[str, Any] = Field(default_factory=dict)


class MovedOut(BaseModel):
    id: str
    order_id: str
    status: Status
    version: int


@router.get("", response_model=list[DispatchOut], summary="List dispatches",
            responses=responses(401, 403, 422))
async def get_dispatches(
    engine: EngineDep,
    _: ReaderDep,
    status: Status | None = None,
    order_id: Annotated[str | None, params.text()] = None,
    limit: Annotated[int, params.limit(500)] = 50,
    offset: params.Offset = 0,
) -> list[dict[str, Any]]:
    return await views.list_dispatches(engine, status=status.value if status else None,
                                       order_id=order_id, limit=limit, offset=offset)


@router.get("/{dispatch_id}", response_model=DispatchOut, summary="One dispatch (ETag = version)",
            responses=responses(401, 403, 404, 422))
async def get_dispatch(
    dispatch_id: uuid.UUID, engine: EngineDep, response: Response, _: ReaderDep
) -> dict[str, Any]:
    found = await views.one_dispatch(engine, dispatch_id)
    return with_etag(found, response, missing=f"no dispatch {dispatch_id}")


@router.post("/{dispatch_id}/transitions", response_model=MovedOut,
             summary="Move a dispatch to its next status",
             responses=responses(400, 401, 403, 404, 409, 412, 413, 422, 428))
async def post_transition(
    dispatch_id: uuid.UUID,
    body: TransitionIn,
    uow: UowDep,
    principal: ReaderDep,
    if_match: IfMatchHeader = None,
) -> JSONResponse:
    expected = parse_if_match(if_match, required=True)
    assert expected is not None  # nosec B101 # narrows a type: required=True raises instead
    moved: Moved = await handle(
        TransitionDispatch(
            dispatch_id=dispatch_id, to=body.to, expected_version=expected,
            actor_id=principal.sub, roles=principal.roles & PERSON_ROLES,
            reason=body.reason, evidence=body.evidence,
        ),
        uow,
    )
    return JSONResponse(asdict(moved), headers={"ETag": f'"{moved.version}"'})


@router.get("/{dispatch_id}/history", response_model=list[AuditEntry],
            summary="Every change of this dispatch, oldest first, from the audit log",
            responses=responses(401, 403, 404, 422))
async def get_history(dispatch_id: uuid.UUID, engine: EngineDep, _: ReaderDep) -> list[dict[str, Any]]:
    found = await views.dispatch_history(engine, dispatch_id)
    if found is None:
        raise HTTPException(404, f"no dispatch {dispatch_id}")
    return found
