"""Events the dispatch service owns (`dispatch.*`)."""

from __future__ import annotations

from pydantic import Field

from shared.contracts.envelope import Contract

DISPATCH_CREATED = "dispatch.created"


def dispatch_status_event(status: str) -> str:
    """`dispatch.<new status>`: the routing key of a transition into `status`."""
    return f"dispatch.{status}"


class DispatchEvent(Contract):
    dispatch_id: str = Field(min_length=1)
    order_id: str = Field(min_length=1)
    version: int = Field(ge=1)
    status: str


class DispatchCreated(DispatchEvent):
    pass


class DispatchTransitioned(DispatchEvent):
    from_status: str
    reason: str = ""
    evidence: dict[str, object] = Field(default_factory=dict)
