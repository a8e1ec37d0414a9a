"""HTTP edges of the notification service: request → view; no business rules here."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from services.notification import views
from shared.auth import Principal, require_roles
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
