"""The one place where dispatch state becomes wire contracts (`dispatch.*`)."""

from __future__ import annotations

from typing import Any

from services.dispatch.domain import TRANSITIONS
from shared.contracts.dispatch import (
    DISPATCH_CREATED,
    DispatchCreated,
    DispatchTransitioned,
    dispatch_status_event,
)


def dispatch_created(*, dispatch_id: str, order_id: str, status: str) -> tuple[str, dict[str, Any]]:
    data = DispatchCreated(dispatch_id=dispatch_id, order_id=order_id, version=1, status=status)
    return DISPATCH_CREATED, data.model_dump(mode="json")


def dispatch_transitioned(
    *,
    dispatch_id: str,
    order_id: str,
    version: int,
    from_status: str,
    status: str,
    reason: str,
    evidence: dict[str, Any],
) -> tuple[str, dict[str, Any]]:
    data = DispatchTransitioned(
        dispatch_id=dispatch_id,
        order_id=order_id,
        version=version,
        status=status,
        from_status=from_status,
        reason=reason,
        evidence=evidence,
    )
    return dispatch_status_event(status), data.model_dump(mode="json")


# Events this service publishes, for the AsyncAPI catalogue: one per target of the workflow.
PUBLISHED: dict[str, type[Any]] = {
    DISPATCH_CREATED: DispatchCreated,
    **{dispatch_status_event(rule.target.value): DispatchTransitioned
       for rule in TRANSITIONS.values()},
}
