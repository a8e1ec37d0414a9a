"""The v1 envelope every message on `spine.events` carries."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

CONTRACT_VERSION = 1

T = TypeVar("T")


class Contract(BaseModel):
    """Base of every wire model: frozen, and tolerant of fields a newer producer adds."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class Actor(Contract):
    id: str = Field(min_length=1)
    role: str = Field(min_length=1)


class ActorLike(Protocol):
    """The wire `Actor`, or the domain's: anything that names who acted and in which role."""

    @property
    def id(self) -> str: ...

    @property
    def role(self) -> str: ...


class Envelope(Contract, Generic[T]):
    event_id: uuid.UUID
    type: str = Field(min_length=1)
    version: int = CONTRACT_VERSION
    occurred_at: datetime
    producer: str = Field(min_length=1)
    correlation_id: uuid.UUID
    causation_id: uuid.UUID | None = None
    actor: Actor
    data: T


class LooseEnvelope(Envelope[dict[str, Any]]):
    """An envelope whose `data` is checked later, so that bad data can be answered, not dropped."""


class ExternalEnvelope(LooseEnvelope):
    """An outside system's envelope: a machine sender may leave `actor` out (the system acts)."""

    actor: Actor | None = None  # type: ignore[assignment]


def new_envelope(
    *,
    type: str,
    producer: str,
    data: dict[str, Any],
    actor: ActorLike,
    correlation_id: uuid.UUID | None = None,
    causation_id: uuid.UUID | None = None,
    event_id: uuid.UUID | None = None,
) -> dict[str, Any]:
    """Build an envelope as a JSON-ready dict (what the outbox stores and the relay sends)."""
    return {
        "event_id": str(event_id or uuid.uuid4()),
        "type": type,
        "version": CONTRACT_VERSION,
        "occurred_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "producer": producer,
        "correlation_id": str(correlation_id or uuid.uuid4()),
        "causation_id": str(causation_id) if causation_id else None,
        "actor": {"id": actor.id, "role": actor.role},
        "data": data,
    }
