"""HTTP edges of the notification service: request → view; no business rules here."""

from __future__ import annotations

import uuid
from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, UploadFile
from pydantic import BaseModel

from services.notification import views
from services.notification.domain import DeliveryNotFound, NotRetriable, UnreadablePeopleFile
from services.notification.handlers import ImportPeople, RetryDelivery, handle
from services.notification.unit_of_work import NotificationUnitOfWork
from shared.audit import TimelineOut
from shared.auth import Principal, require_roles
from shared.tokens import ROLES
from shared.web import params
from shared.web.deps import EngineDep, unit_of_work
from shared.web.problems import responses

router = APIRouter(tags=["events"])
# Observed events cross every service and journey: for ops and supervisors, not every reader.
OpsReaderDep = Annotated[Principal, Depends(require_roles("ops", "supervisor"))]


class ObservedEventOut(BaseModel):
    event_id: uuid.UUID
    type: str
    producer: str
    occurred_at: datetime
    correlation_id: uuid.UUID
    causation_id: uuid.UUID | None
    actor_id: str
    actor_role: str
    aggregate_type: str | None
    aggregate_id: str | None
    aggregate_version: int | None
    data: dict[str, Any]
    received_at: datetime


@router.get("/events", response_model=list[ObservedEventOut],
            summary="Events this service has observed (newest first unless order=asc)",
            responses=responses(401, 403, 422))
async def get_events(
    engine: EngineDep,
    _: OpsReaderDep,
    correlation_id: Annotated[uuid.UUID | None, Query(description="one order journey")] = None,
    type: Annotated[str | None, params.text("exact event type, e.g. dispatch.packed")] = None,
    aggregate_id: Annotated[str | None, params.text("a dispatch or order id")] = None,
    order: Literal["asc", "desc"] = "desc",
    limit: Annotated[int, params.limit(500)] = 100,
) -> list[dict[str, Any]]:
    return await views.list_events(engine, correlation_id=correlation_id, event_type=type,
                                   aggregate_id=aggregate_id, oldest_first=order == "asc",
                                   limit=limit)


people_router = APIRouter(tags=["notifications"])
PersonDep = Annotated[Principal, Depends(require_roles(*ROLES))]
RulesReaderDep = Annotated[Principal, Depends(require_roles("supervisor", "ops"))]
# The directory holds addresses and webhook secrets: ops maintain it; supervisors may read it.
OpsDep = Annotated[Principal, Depends(require_roles("ops"))]
UowDep = Annotated[NotificationUnitOfWork, Depends(unit_of_work)]
# Room for the multipart boundaries and the small form fields beside the file.
UPLOAD_OVERHEAD_BYTES = 64 * 1024


class RuleOut(BaseModel):
    id: str
    on: str
    when: dict[str, Any]
    notify: list[str]
    channels: list[str]
    title: str
    body: str
    html: str | None


class DeliveryOut(BaseModel):
    id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    rule_id: str
    recipient: str
    channel: str
    status: str
    attempts: int
    last_error: str | None
    title: str
    body: str
    created_at: datetime
    sent_at: datetime | None
    read_at: datetime | None
    next_attempt_at: datetime | None


class InboxOut(BaseModel):
    unread: int
    entries: list[DeliveryOut]


@people_router.get("/rules", response_model=list[RuleOut], summary="The notification rules in force",
                   responses=responses(401, 403))
async def get_rules(request: Request, _: RulesReaderDep) -> list[dict[str, Any]]:
    return [{**asdict(rule), "when": dict(rule.when)} for rule in request.app.state.rules]


def _addresses(principal: Principal) -> list[str]:
    """Whom a caller's inbox holds: entries for them as a user and for each of their roles."""
    return [f"user:{principal.sub}", *(f"role:{r}" for r in sorted(principal.roles & set(ROLES)))]


@people_router.get("/inbox", response_model=InboxOut,
                   summary="The caller's in-app notifications (by user and roles), newest first",
                   responses=responses(401, 403, 422))
async def get_inbox(engine: EngineDep, principal: PersonDep, unread_only: bool = False,
                    limit: Annotated[int, params.limit(500)] = 50,
                    offset: params.Offset = 0) -> dict[str, Any]:
    return await views.inbox(engine, _addresses(principal), unread_only=unread_only,
                             limit=limit, offset=offset)


@people_router.post("/inbox/{delivery_id}/read", response_model=DeliveryOut,
                    summary="Mark one of the caller's notifications read",
                    responses=responses(401, 403, 404, 422))
async def post_read(delivery_id: uuid.UUID, engine: EngineDep,
                    principal: PersonDep) -> dict[str, Any]:
    found = await views.mark_read(engine, delivery_id, _addresses(principal))
    if found is None:
        raise HTTPException(404, f"no notification {delivery_id} in your inbox")
    return found


@people_router.get("/timeline", response_model=TimelineOut,
                   summary="The notification service's part of one order's timeline: the "
                           "deliveries its events caused, oldest first",
                   responses=responses(401, 403, 422))
async def get_timeline(
    engine: EngineDep,
    # Deliveries name recipients and addresses: the readers of /deliveries, not every role.
    _: RulesReaderDep,
    order_id: Annotated[str, params.text("the order's id", max_length=200)],
    limit: Annotated[int, params.limit(1000)] = 500,
    offset: params.Offset = 0,
) -> dict[str, Any]:
    # An order nobody was told about is an empty part, not a 404.
    entries = await views.order_timeline(engine, order_id, limit=limit, offset=offset)
    return {"order_id": order_id, "service": "notification", "entries": entries}


@people_router.get("/deliveries", response_model=list[DeliveryOut],
                   summary="Every notification, with its rule, recipient, channel and status",
                   responses=responses(401, 403, 422))
async def get_deliveries(
    engine: EngineDep, _: RulesReaderDep,
    event_id: uuid.UUID | None = None,
    recipient: Annotated[str | None, params.text("user:<id> or role:<role>")] = None,
    channel: Annotated[str | None, params.text()] = None,
    status: Literal["pending", "sent", "failed"] | None = None,
    limit: Annotated[int, params.limit(500)] = 100,
    offset: params.Offset = 0,
) -> list[dict[str, Any]]:
    return await views.deliveries(engine, event_id=event_id, recipient=recipient,
                                  channel=channel, status=status, limit=limit, offset=offset)


@people_router.post("/deliveries/{delivery_id}/retry", response_model=DeliveryOut,
                    summary="Send a failed delivery again (its attempts start from zero)",
                    responses=responses(401, 403, 404, 409, 422))
async def post_retry(delivery_id: uuid.UUID, uow: UowDep, engine: EngineDep,
                     principal: OpsDep) -> dict[str, Any]:
    try:
        await handle(RetryDelivery(delivery_id, principal.acting_as(["ops"])), uow)
    except DeliveryNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except NotRetriable as exc:
        raise HTTPException(409, str(exc)) from None
    found = await views.delivery(engine, delivery_id)
    assert found is not None  # nosec B101 # nothing deletes a delivery
    return found


class PersonOut(BaseModel):
    id: str
    name: str
    roles: list[str]
    email: str | None
    webhook_url: str | None
    has_webhook_secret: bool
    updated_at: datetime


class RowErrorOut(BaseModel):
    row: int
    key: str | None
    reasons: list[str]
    message: str


class PeopleImportOut(BaseModel):
    filename: str
    dry_run: bool
    rows_total: int
    created: int
    updated: int
    unchanged: int
    rejected: int
    errors: list[RowErrorOut]
    summary: str


@people_router.get("/people", response_model=list[PersonOut],
                   summary="The people directory the rules resolve against (no secrets)",
                   responses=responses(401, 403, 422))
async def get_people(engine: EngineDep, _: RulesReaderDep,
                     role: Annotated[str | None, params.text("holders of this role")] = None,
                     limit: Annotated[int, params.limit(500)] = 100,
                     offset: params.Offset = 0) -> list[dict[str, Any]]:
    return await views.people(engine, role=role, limit=limit, offset=offset)


@people_router.post("/people/imports", response_model=PeopleImportOut,
                    summary="Load people from a CSV (id,name,roles,email,webhook_url,"
                            "webhook_secret); bad rows reported, changed rows written",
                    responses=responses(400, 401, 403, 413, 422))
async def post_people_import(
    request: Request, uow: UowDep, principal: OpsDep,
    file: Annotated[UploadFile, File(description="CSV with a header row")],
    dry_run: Annotated[bool, Form(description="check and count, write nothing")] = False,
) -> dict[str, Any]:
    limit = request.app.state.runtime.settings.people_import_max_bytes
    content = await file.read(limit + 1)
    if len(content) > limit:
        raise HTTPException(413, f"the file is larger than {limit} bytes")
    name = file.filename or "upload"
    try:
        report = await handle(ImportPeople(name, content, principal.acting_as(["ops"]), dry_run),
                              uow)
    except UnreadablePeopleFile as exc:
        raise HTTPException(400, f"{name}: {exc}") from None
    return {"filename": name, "dry_run": dry_run, "rows_total": report.rows_total,
            "created": report.created, "updated": report.updated,
            "unchanged": report.unchanged, "rejected": len(report.problems),
            "errors": [p.as_dict() for p in report.problems], "summary": report.summary()}
