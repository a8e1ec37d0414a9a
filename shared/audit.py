"""Reading the append-only audit log, the same way in every service (writing is in `uow`)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

_HISTORY = text(
    "SELECT id, occurred_at, actor_id, actor_role, action, from_state, to_state, reason, "
    "correlation_id, causation_id, details FROM audit_log "
    "WHERE entity_type = :entity_type AND entity_id = :entity_id ORDER BY id"
)


class AuditEntry(BaseModel):
    """One row of an entity's history: who did what, when, from which state to which, and why."""

    id: int
    occurred_at: datetime
    actor_id: str
    actor_role: str
    action: str
    from_state: str | None
    to_state: str | None
    reason: str | None
    correlation_id: uuid.UUID | None
    causation_id: uuid.UUID | None
    details: dict[str, Any]


async def history(conn: AsyncConnection, entity_type: str, entity_id: str) -> list[dict[str, Any]]:
    """Every audit row about one entity, oldest first."""
    rows = await conn.execute(_HISTORY, {"entity_type": entity_type, "entity_id": entity_id})
    return [dict(r) for r in rows.mappings()]
