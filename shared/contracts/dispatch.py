"""Events the dispatch service owns (`dispatch.*`)."""

from __future__ import annotations

from pydantic import ConfigDict, Field

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


class LineQuantity(Contract):
    line_no: int
    quantity: str


class ApprovalTrace(Contract):
    """Who asked, who decided and why: carried by every change a second person approved."""

    id: str
    kind: str
    requested_by: str
    approved_by: str | None
    comment: str | None = None


class DispatchTransitioned(DispatchEvent):
    """A dispatch moved along its workflow (`dispatch.<status>`).

    `lines` are the packed (`dispatch.packed`) or shipped (`dispatch.shipped`) quantities per
    line, and `backorder` what is still owed on each short line; `approval` is set when a
    second person approved the move (a cancel after picking began, a short pack).
    """

    from_status: str
    reason: str = ""
    evidence: dict[str, object] = Field(default_factory=dict)
    lines: list[LineQuantity] = Field(default_factory=list)
    backorder: list[LineQuantity] = Field(default_factory=list)
    approval: ApprovalTrace | None = None


DISPATCH_CORRECTED = "dispatch.corrected"


class CorrectionChange(Contract):
    field: str
    line_no: int | None = None
    from_: str | None = Field(default=None, alias="from")
    to: str

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class DispatchCorrected(DispatchEvent):
    """A shipped dispatch was corrected after a second person approved it."""

    changes: list[CorrectionChange]
    reason: str
    requested_by: str
    approved_by: str
    approval_id: str


def exception_event(what: str) -> str:
    """`dispatch.exception.<opened|acknowledged|escalated|resolved>`."""
    return f"dispatch.exception.{what}"


EXCEPTION_EVENTS = tuple(exception_event(w)
                         for w in ("opened", "acknowledged", "escalated", "resolved"))


class DispatchExceptionChanged(Contract):
    """An exception on a dispatch was opened, acknowledged, escalated or resolved."""

    exception_id: str
    dispatch_id: str
    order_id: str
    version: int = Field(ge=1, description="the dispatch's version after the change")
    status: str
    owner: str
    escalated_from: str | None = None
    reason_code: str
    blocking: bool
    due_at: str
    description: str = ""
    resolution: str | None = None


def approval_event(what: str) -> str:
    """`dispatch.approval.<requested|approved|rejected>`."""
    return f"dispatch.approval.{what}"


APPROVAL_EVENTS = tuple(approval_event(w) for w in ("requested", "approved", "rejected"))


class DispatchApprovalChanged(Contract):
    """A four-eyes request on a dispatch was made, approved or rejected."""

    approval_id: str
    dispatch_id: str
    order_id: str
    version: int = Field(ge=1, description="the dispatch's version after the change")
    kind: str
    status: str
    requested_by: str
    decided_by: str | None = None
    note: str | None = Field(default=None, description="the approver's comment or the reason "
                                                       "for rejecting")
    request: dict[str, object] = Field(default_factory=dict)


EXCEPTION_REJECTED = "dispatch.exception.rejected"
PROGRESS_REJECTED = "dispatch.progress.rejected"


class ExceptionReportRejected(Contract):
    """A production exception from an outside system was not applied, and why.

    `parked`: it names no dispatch yet, and is kept to be applied when that order's dispatch
    opens (an order still on its way); otherwise it is dead-lettered for ops as well.
    """

    source: str
    reasons: list[str]
    order_external_ref: str | None = None
    order_id: str | None = None
    parked: bool = False


class ProgressRejected(Contract):
    """A progress report from an outside system was refused; nothing changed."""

    source: str
    to: str | None = None
    reasons: list[str]
    dispatch_id: str | None = None
    order_external_ref: str | None = None
