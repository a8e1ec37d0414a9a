"""HTTP edges of the notification service: request → view; no business rules here."""

from __future__ import annotations

import uuid
from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel

from services.notification import views
from shared.auth import Principal, require_roles
from shared.tokens import ROLES
from shared.web import params
from shared.web.deps import EngineDep
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


class RuleOut(BaseModel):
    id: str
    on: str
    when: dict[str, Any]
    notify: list[str]
    channels: list[str]
    title: str
    body: str


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
