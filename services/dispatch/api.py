"""HTTP edges of the dispatch service: request → command → handler; no business rules here."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Response
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from services.dispatch import views
from services.dispatch.domain import (
    REASON_CODES,
    ApprovalKind,
    ApprovalStatus,
    CorrectedField,
    ExceptionStatus,
    Status,
)
from services.dispatch.handlers import (
    AcknowledgeException,
    ApprovalChange,
    DecideApproval,
    ExceptionChange,
    Moved,
    OpenException,
    RequestCorrection,
    ResolveException,
    TransitionDispatch,
    handle,
)
from services.dispatch.unit_of_work import DispatchUnitOfWork
from shared.audit import AuditEntry, TimelineOut
from shared.auth import Principal
from shared.tokens import ROLES
from shared.web import params
from shared.web.deps import EngineDep, IfMatchHeader, ReaderDep, parse_if_match, unit_of_work, with_etag
from shared.web.problems import responses

router = APIRouter(prefix="/dispatches", tags=["dispatches"])
exceptions_router = APIRouter(prefix="/exceptions", tags=["exceptions"])
approvals_router = APIRouter(prefix="/approvals", tags=["approvals"])
# The dispatch's part of the cross-service timeline; `/timeline` in every service, so no prefix.
timeline_router = APIRouter(tags=["timeline"])
UowDep = Annotated[DispatchUnitOfWork, Depends(unit_of_work)]
# Roles a person's token may carry; anything else in a token (e.g. "system") grants nothing.
PERSON_ROLES = frozenset(ROLES)
Text = Annotated[str, Field(max_length=2000, pattern=params.PRINTABLE_MULTILINE)]


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
    corrections: list[dict[str, Any]] = Field(
        default_factory=list, description="approved corrections, oldest first (also in facts)")


class ExceptionOut(BaseModel):
    id: uuid.UUID
    dispatch_id: uuid.UUID
    order_id: str
    reason_code: str
    description: str
    owner: str
    escalated_from: str | None
    due_at: datetime
    overdue: bool
    blocking: bool
    status: ExceptionStatus
    version: int
    opened_by: str
    opened_at: datetime
    acknowledged_at: datetime | None
    escalated_at: datetime | None
    resolved_at: datetime | None
    resolution: str | None


class DispatchDetailOut(DispatchOut):
    exceptions: list[ExceptionOut]


class ApprovalOut(BaseModel):
    id: uuid.UUID
    dispatch_id: uuid.UUID
    order_id: str
    kind: ApprovalKind
    status: ApprovalStatus
    requested_by: str
    requested_at: datetime
    request: dict[str, Any]
    dispatch_version: int = Field(description="the dispatch's version the request was made on: "
                                              "approving it after the dispatch moved on is 409")
    version: int
    decided_by: str | None
    decided_at: datetime | None
    note: str | None = Field(description="the approver's comment, or why it was rejected")


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


class ExceptionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason_code: Literal[REASON_CODES]  # type: ignore[valid-type]
    description: Text = ""
    owner: str = Field(min_length=1, max_length=200, pattern=params.PRINTABLE,
                       description="a user id, or role:<role> for anyone holding that role")
    due_at: AwareDatetime
    blocking: bool


class ResolveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    resolution: Text = Field(min_length=1)


class ChangeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    field: CorrectedField
    line_no: int | None = Field(default=None, ge=1, le=params.MAX_INT,
                                description="the line, for shipped_quantity")
    to: str = Field(min_length=1, max_length=200, pattern=params.PRINTABLE)


class CorrectionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    changes: list[ChangeIn] = Field(min_length=1, max_length=50)
    reason: Text = Field(min_length=1)


class ApproveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    comment: Text = ""


class RejectIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Text = Field(min_length=1)


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


@router.get("/{dispatch_id}", response_model=DispatchDetailOut,
            summary="One dispatch with its exceptions and corrections (ETag = version)",
            responses=responses(401, 403, 404, 422))
async def get_dispatch(
    dispatch_id: uuid.UUID, engine: EngineDep, response: Response, _: ReaderDep
) -> dict[str, Any]:
    found = await views.one_dispatch(engine, dispatch_id)
    return with_etag(found, response, missing=f"no dispatch {dispatch_id}")


def _roles(principal: Principal) -> frozenset[str]:
    return principal.roles & PERSON_ROLES


def _requested(approval: dict[str, Any]) -> JSONResponse:
    """202: the request waits for a second person; `Location` names it."""
    return JSONResponse(jsonable_encoder(ApprovalOut.model_validate(approval)), status_code=202,
                        headers={"Location": f"/approvals/{approval['id']}"})


async def _approval(engine: Any, approval_id: Any) -> dict[str, Any]:
    found = await views.one_approval(engine, uuid.UUID(str(approval_id)))
    assert found is not None  # nosec B101 # it was committed just now
    return found


async def _exception(engine: Any, change: ExceptionChange, *, status_code: int = 200) -> JSONResponse:
    found = await views.one_exception(engine, uuid.UUID(change.exception.id))
    assert found is not None  # nosec B101 # it was committed just now
    headers = {"ETag": f'"{change.dispatch.version}"'}
    if status_code == 201:
        headers["Location"] = f"/exceptions/{change.exception.id}"
    body = {**jsonable_encoder(ExceptionOut.model_validate(found)),
            "dispatch_status": change.dispatch.status, "dispatch_version": change.dispatch.version}
    return JSONResponse(body, status_code=status_code, headers=headers)


@router.post("/{dispatch_id}/transitions", response_model=MovedOut,
             summary="Move a dispatch to its next status",
             description="A move that needs a second person (cancelling after picking began, "
                         "packing short) is answered 202 with the approval request it made.",
             responses={**responses(400, 401, 403, 404, 409, 412, 413, 422, 428),
                        202: {"model": ApprovalOut,
                              "description": "Accepted: an approval request waits"}})
async def post_transition(
    dispatch_id: uuid.UUID,
    body: TransitionIn,
    uow: UowDep,
    engine: EngineDep,
    principal: ReaderDep,
    if_match: IfMatchHeader = None,
) -> JSONResponse:
    expected = parse_if_match(if_match, required=True)
    assert expected is not None  # nosec B101 # narrows a type: required=True raises instead
    moved: Moved = await handle(
        TransitionDispatch(
            dispatch_id=dispatch_id, to=body.to, expected_version=expected,
            actor_id=principal.sub, roles=_roles(principal),
            reason=body.reason, evidence=body.evidence,
        ),
        uow,
    )
    if moved.approval is not None:
        return _requested(await _approval(engine, moved.approval.id))
    return JSONResponse({"id": moved.id, "order_id": moved.order_id, "status": moved.status,
                         "version": moved.version}, headers={"ETag": f'"{moved.version}"'})


@router.post("/{dispatch_id}/exceptions", response_model=ExceptionOut, status_code=201,
             summary="Open an owned exception (a blocking one puts the dispatch on hold)",
             responses=responses(400, 401, 403, 404, 409, 412, 413, 422))
async def post_exception(
    dispatch_id: uuid.UUID, body: ExceptionIn, uow: UowDep, engine: EngineDep,
    principal: ReaderDep, if_match: IfMatchHeader = None,
) -> JSONResponse:
    change: ExceptionChange = await handle(OpenException(
        dispatch_id=dispatch_id, actor_id=principal.sub, roles=_roles(principal),
        reason_code=body.reason_code, owner=body.owner, due_at=body.due_at,
        blocking=body.blocking, description=body.description,
        expected_version=parse_if_match(if_match, required=False)), uow)
    return await _exception(engine, change, status_code=201)


@router.post("/{dispatch_id}/corrections", response_model=ApprovalOut, status_code=202,
             summary="Ask for a correction of a shipped dispatch (a supervisor approves it)",
             responses=responses(400, 401, 403, 404, 409, 412, 413, 422))
async def post_correction(
    dispatch_id: uuid.UUID, body: CorrectionIn, uow: UowDep, engine: EngineDep,
    principal: ReaderDep, if_match: IfMatchHeader = None,
) -> JSONResponse:
    moved: Moved = await handle(RequestCorrection(
        dispatch_id=dispatch_id, actor_id=principal.sub, roles=_roles(principal),
        changes=[c.model_dump(mode="json") for c in body.changes], reason=body.reason,
        expected_version=parse_if_match(if_match, required=False)), uow)
    assert moved.approval is not None  # nosec B101 # a correction is always a request
    return _requested(await _approval(engine, moved.approval.id))


@router.get("/{dispatch_id}/history", response_model=list[AuditEntry],
            summary="Every change of this dispatch, oldest first, from the audit log",
            responses=responses(401, 403, 404, 422))
async def get_history(dispatch_id: uuid.UUID, engine: EngineDep, _: ReaderDep) -> list[dict[str, Any]]:
    found = await views.dispatch_history(engine, dispatch_id)
    if found is None:
        raise HTTPException(404, f"no dispatch {dispatch_id}")
    return found


@timeline_router.get("/timeline", response_model=TimelineOut,
                     summary="The dispatch service's part of one order's timeline: its "
                             "dispatch, exceptions, approvals and corrections, oldest first",
                     responses=responses(401, 403, 422))
async def get_timeline(
    engine: EngineDep,
    _: ReaderDep,
    order_id: Annotated[str, params.text("the order's id", max_length=200)],
    limit: Annotated[int, params.limit(1000)] = 500,
    offset: params.Offset = 0,
) -> dict[str, Any]:
    # An order without a dispatch yet is an empty part, not a 404.
    entries = await views.order_timeline(engine, order_id, limit=limit, offset=offset)
    return {"order_id": order_id, "service": "dispatch", "entries": entries}


@exceptions_router.get("", response_model=list[ExceptionOut], summary="List exceptions, earliest due first",
                       responses=responses(401, 403, 422))
async def get_exceptions(
    engine: EngineDep,
    _: ReaderDep,
    status: ExceptionStatus | None = None,
    owner: Annotated[str | None, params.text()] = None,
    dispatch_id: uuid.UUID | None = None,
    reason_code: Annotated[str | None, params.text()] = None,
    overdue: bool | None = None,
    limit: Annotated[int, params.limit(500)] = 50,
    offset: params.Offset = 0,
) -> list[dict[str, Any]]:
    return await views.list_exceptions(
        engine, status=status.value if status else None, owner=owner, dispatch_id=dispatch_id,
        reason_code=reason_code, overdue=overdue, limit=limit, offset=offset)


@exceptions_router.get("/{exception_id}", response_model=ExceptionOut, summary="One exception",
                       responses=responses(401, 403, 404, 422))
async def get_exception(exception_id: uuid.UUID, engine: EngineDep, _: ReaderDep) -> dict[str, Any]:
    found = await views.one_exception(engine, exception_id)
    if found is None:
        raise HTTPException(404, f"no exception {exception_id}")
    return found


@exceptions_router.post("/{exception_id}/acknowledge", response_model=ExceptionOut,
                        summary="Acknowledge an exception (its owner or a supervisor)",
                        responses=responses(401, 403, 404, 409, 422))
async def post_acknowledge(exception_id: uuid.UUID, uow: UowDep, engine: EngineDep,
                           principal: ReaderDep) -> JSONResponse:
    change: ExceptionChange = await handle(AcknowledgeException(
        exception_id=exception_id, actor_id=principal.sub, roles=_roles(principal)), uow)
    return await _exception(engine, change)


@exceptions_router.post("/{exception_id}/resolve", response_model=ExceptionOut,
                        summary="Resolve an exception (its owner or a supervisor); the last "
                                "blocking one returns the dispatch to the state it left",
                        responses=responses(400, 401, 403, 404, 409, 413, 422))
async def post_resolve(exception_id: uuid.UUID, body: ResolveIn, uow: UowDep, engine: EngineDep,
                       principal: ReaderDep) -> JSONResponse:
    change: ExceptionChange = await handle(ResolveException(
        exception_id=exception_id, actor_id=principal.sub, roles=_roles(principal),
        resolution=body.resolution), uow)
    return await _exception(engine, change)


@approvals_router.get("", response_model=list[ApprovalOut], summary="List approval requests, oldest first",
                      responses=responses(401, 403, 422))
async def get_approvals(
    engine: EngineDep,
    _: ReaderDep,
    status: ApprovalStatus | None = None,
    kind: ApprovalKind | None = None,
    dispatch_id: uuid.UUID | None = None,
    limit: Annotated[int, params.limit(500)] = 50,
    offset: params.Offset = 0,
) -> list[dict[str, Any]]:
    return await views.list_approvals(
        engine, status=status.value if status else None, kind=kind.value if kind else None,
        dispatch_id=dispatch_id, limit=limit, offset=offset)


@approvals_router.get("/{approval_id}", response_model=ApprovalOut, summary="One approval request",
                      responses=responses(401, 403, 404, 422))
async def get_approval(approval_id: uuid.UUID, engine: EngineDep, _: ReaderDep) -> dict[str, Any]:
    found = await views.one_approval(engine, approval_id)
    if found is None:
        raise HTTPException(404, f"no approval {approval_id}")
    return found


async def _decide(approval_id: uuid.UUID, approve: bool, note: str, uow: Any, engine: Any,
                  principal: Principal) -> dict[str, Any]:
    change: ApprovalChange = await handle(DecideApproval(
        approval_id=approval_id, approve=approve, actor_id=principal.sub,
        roles=_roles(principal), note=note), uow)
    return await _approval(engine, change.approval.id)


@approvals_router.post("/{approval_id}/approve", response_model=ApprovalOut,
                       summary="Approve and apply a request (a supervisor who did not ask)",
                       responses=responses(400, 401, 403, 404, 409, 413, 422))
async def post_approve(approval_id: uuid.UUID, body: ApproveIn, uow: UowDep, engine: EngineDep,
                       principal: ReaderDep) -> dict[str, Any]:
    return await _decide(approval_id, True, body.comment, uow, engine, principal)


@approvals_router.post("/{approval_id}/reject", response_model=ApprovalOut,
                       summary="Reject a request, saying why (a supervisor who did not ask)",
                       responses=responses(400, 401, 403, 404, 409, 413, 422))
async def post_reject(approval_id: uuid.UUID, body: RejectIn, uow: UowDep, engine: EngineDep,
                      principal: ReaderDep) -> dict[str, Any]:
    return await _decide(approval_id, False, body.reason, uow, engine, principal)
