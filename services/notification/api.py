"""HTTP edges of the notification service: request → query; no business rules here."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from services.notification.repository import list_events
from shared.auth import Principal, require_roles
from shared.uow import UnitOfWork

router = APIRouter(tags=["events"])
Reader = Annotated[Principal, Depends(require_roles("ops", "supervisor"))]


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


def _uow(request: Request) -> UnitOfWork:
    return request.app.state.uow  # type: ignore[no-any-return]


@router.get("/events", response_model=list[ObservedEventOut],
            summary="Events this service has observed (newest first unless order=asc)")
async def get_events(
    request: Request,
    _: Reader,
    correlation_id: Annotated[uuid.UUID | None, Query(description="one order journey")] = None,
    type: Annotated[str | None, Query(description="exact event type, e.g. dispatch.packed")]
    = None,
    aggregate_id: Annotated[str | None, Query(description="a dispatch or order id")] = None,
    order: Literal["asc", "desc"] = "desc",
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[dict[str, Any]]:
    async with _uow(request).engine.connect() as conn:
        return await list_events(conn, correlation_id=correlation_id, event_type=type,
                                 aggregate_id=aggregate_id, oldest_first=order == "asc",
                                 limit=limit)
