"""The one place where dispatch domain events become wire contracts (`dispatch.*`)."""

from __future__ import annotations

from typing import Any

from services.dispatch.domain import (
    WORKFLOW,
    ApprovalChanged,
    DispatchCorrected,
    DispatchCreated,
    DispatchMoved,
    ExceptionChanged,
    ReportRejected,
)
from shared.contracts.dispatch import (
    APPROVAL_EVENTS,
    DISPATCH_CORRECTED,
    DISPATCH_CREATED,
    EXCEPTION_EVENTS,
    EXCEPTION_REJECTED,
    PROGRESS_REJECTED,
    DispatchApprovalChanged,
    DispatchExceptionChanged,
    DispatchTransitioned,
    ExceptionReportRejected,
    ProgressRejected,
    approval_event,
    dispatch_status_event,
    exception_event,
)
from shared.contracts.dispatch import (
    DispatchCorrected as DispatchCorrectedContract,
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
        moved = DispatchTransitioned.model_validate({
            "dispatch_id": event.dispatch_id, "order_id": event.order_id,
            "version": event.version, "status": event.status, "from_status": event.from_status,
            "reason": event.reason, "evidence": event.evidence, "lines": event.lines,
            "backorder": event.backorder, "approval": event.approval,
        })
        return WireEvent(dispatch_status_event(event.status), moved.model_dump(mode="json"))
    if isinstance(event, ExceptionChanged):
        r = event.record
        changed = DispatchExceptionChanged(
            exception_id=r.id, dispatch_id=event.dispatch_id, order_id=event.order_id,
            version=event.version, status=r.status, owner=r.owner,
            escalated_from=r.escalated_from, reason_code=r.reason_code, blocking=r.blocking,
            due_at=r.due_at.isoformat(), description=r.description, resolution=r.resolution)
        return WireEvent(exception_event(event.what), changed.model_dump(mode="json"))
    if isinstance(event, ApprovalChanged):
        a = event.approval
        decided = DispatchApprovalChanged(
            approval_id=a.id, dispatch_id=event.dispatch_id, order_id=event.order_id,
            version=event.version, kind=a.kind, status=a.status, requested_by=a.requested_by,
            decided_by=a.decided_by, note=a.note, request=a.request)
        return WireEvent(approval_event(event.what), decided.model_dump(mode="json"))
    if isinstance(event, DispatchCorrected):
        corrected = DispatchCorrectedContract.model_validate({
            "dispatch_id": event.dispatch_id, "order_id": event.order_id,
            "version": event.version, "status": event.status, "changes": event.changes,
            "reason": event.reason, "requested_by": event.requested_by,
            "approved_by": event.approved_by, "approval_id": event.approval_id,
        })
        return WireEvent(DISPATCH_CORRECTED, corrected.model_dump(mode="json", by_alias=True))
    if isinstance(event, ReportRejected) and event.report == "exception":
        rejected = ExceptionReportRejected(
            source=event.source, reasons=event.reasons, order_id=event.order_id,
            order_external_ref=event.order_external_ref, parked=event.parked)
        return WireEvent(EXCEPTION_REJECTED, rejected.model_dump(mode="json"))
    if isinstance(event, ReportRejected):
        refused = ProgressRejected(
            source=event.source, to=event.to, reasons=event.reasons,
            dispatch_id=event.dispatch_id, order_external_ref=event.order_external_ref)
        return WireEvent(PROGRESS_REJECTED, refused.model_dump(mode="json"))
    return None


# Events this service publishes, for the AsyncAPI catalogue: one per target of the workflow,
# one per step of an exception's and of an approval's lifecycle, and the correction.
PUBLISHED: dict[str, type[Any]] = {
    DISPATCH_CREATED: DispatchCreatedContract,
    **{dispatch_status_event(target): DispatchTransitioned
       for target in WORKFLOW.targets() if WORKFLOW.rule(None, target) is None},
    **dict.fromkeys(EXCEPTION_EVENTS, DispatchExceptionChanged),
    **dict.fromkeys(APPROVAL_EVENTS, DispatchApprovalChanged),
    DISPATCH_CORRECTED: DispatchCorrectedContract,
    EXCEPTION_REJECTED: ExceptionReportRejected,
    PROGRESS_REJECTED: ProgressRejected,
}
