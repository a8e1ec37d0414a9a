"""The one place where dispatch domain events become wire contracts (`dispatch.*`)."""

from __future__ import annotations

from typing import Any

from services.dispatch.domain import WORKFLOW, DispatchCreated, DispatchMoved
from shared.contracts.dispatch import (
    DISPATCH_CREATED,
    DispatchTransitioned,
    dispatch_status_event,
)
from shared.contracts.dispatch import (
    DispatchCreated as DispatchCreatedContract,
)
from shared.domain import DomainEvent
from shared.uow import WireEvent


def to_wire(event: DomainEvent) -> WireEvent | None:
    """The `dispatch.*` event a domain event publishes; None for those that stay inside."""
    if isinstance(event, DispatchCreated):
        data = DispatchCreatedContract(dispatch_id=event.dispatch_id, order_id=event.order_id,
                                       version=event.version, status=event.status)
        return WireEvent(DISPATCH_CREATED, data.model_dump(mode="json"))
    if isinstance(event, DispatchMoved):
        moved = DispatchTransitioned(
            dispatch_id=event.dispatch_id, order_id=event.order_id, version=event.version,
            status=event.status, from_status=event.from_status, reason=event.reason,
            evidence=event.evidence,
        )
        return WireEvent(dispatch_status_event(event.status), moved.model_dump(mode="json"))
    return None


# Events this service publishes, for the AsyncAPI catalogue: one per target of the workflow.
PUBLISHED: dict[str, type[Any]] = {
    DISPATCH_CREATED: DispatchCreatedContract,
    **{dispatch_status_event(target): DispatchTransitioned
       for target in WORKFLOW.targets() if WORKFLOW.rule(None, target) is None},
}
