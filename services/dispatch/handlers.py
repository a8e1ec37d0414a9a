"""Dispatch use cases: each takes a command and the unit of work, and commits one effect.

Handlers load aggregates through `tx.dispatches`, ask them to change, and return; the unit of
work writes the audit and outbox rows of what the aggregates recorded.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from services.dispatch.domain import (
    PARKED_CANCELLATION,
    PARKED_EXCEPTION,
    SYSTEM_ACTOR,
    Approval,
    Dispatch,
    ExceptionRecord,
    OrderCancellationParked,
    OrderSnapshot,
    Parked,
    ReportRejected,
    Status,
)
from services.dispatch.unit_of_work import DispatchTransaction, DispatchUnitOfWork
from shared.domain import Actor
from shared.workflow import SYSTEM, NotFound, Refusal

# How long a supervisor has to decide on an order cancelled after picking began, and how long
# a planner has for a production exception that names no due time.
CANCEL_FOLLOW_UP = timedelta(hours=4)
PRODUCTION_FOLLOW_UP = timedelta(hours=4)
PRODUCTION_OWNER = "role:planner"


@dataclass(frozen=True)
class CreateDispatch:
    """Open the one dispatch of a confirmed order."""

    event_id: str
    consumer: str
    correlation_id: uuid.UUID
    order: OrderSnapshot


@dataclass(frozen=True)
class TransitionDispatch:
    """Move a dispatch along the workflow on behalf of a person."""

    dispatch_id: uuid.UUID
    to: Status
    expected_version: int
    actor_id: str
    roles: frozenset[str]
    reason: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CancelForOrder:
    """The order was cancelled: cancel its dispatch if the workflow still allows the system to."""

    event_id: str
    consumer: str
    correlation_id: uuid.UUID
    order_id: str
    reason: str


@dataclass(frozen=True)
class OpenException:
    """Open an owned exception on a dispatch (a blocking one holds it)."""

    dispatch_id: uuid.UUID
    actor_id: str
    roles: frozenset[str]
    reason_code: str
    owner: str
    due_at: datetime
    blocking: bool
    description: str = ""
    expected_version: int | None = None


@dataclass(frozen=True)
class AcknowledgeException:
    exception_id: uuid.UUID
    actor_id: str
    roles: frozenset[str]


@dataclass(frozen=True)
class ResolveException:
    exception_id: uuid.UUID
    actor_id: str
    roles: frozenset[str]
    resolution: str


@dataclass(frozen=True)
class RequestCorrection:
    """Ask for a correction of a shipped dispatch (a second person approves it)."""

    dispatch_id: uuid.UUID
    actor_id: str
    roles: frozenset[str]
    changes: list[dict[str, Any]]
    reason: str
    expected_version: int | None = None


@dataclass(frozen=True)
class DecideApproval:
    """Approve (and apply) or reject an approval request."""

    approval_id: uuid.UUID
    approve: bool
    actor_id: str
    roles: frozenset[str]
    note: str = ""


@dataclass(frozen=True)
class EscalateOverdue:
    """Escalate every exception due by `now` (the timer's tick); at most `limit` dispatches."""

    now: datetime | None = None
    limit: int = 100


@dataclass(frozen=True)
class ReportProductionException:
    """An outside system reports a problem with an order: an exception on its dispatch."""

    event_id: str
    consumer: str
    correlation_id: uuid.UUID
    source: str
    actor: Actor
    reason_code: str
    description: str
    blocking: bool
    order_id: str | None = None
    order_external_ref: str | None = None
    owner: str | None = None
    due_at: datetime | None = None
    reply_to: str | None = None


@dataclass(frozen=True)
class ReportProgress:
    """An outside system moved a dispatch; applied with the role configured for it (or None)."""

    event_id: str
    consumer: str
    correlation_id: uuid.UUID
    source: str
    role: str | None
    to: str
    evidence: dict[str, Any]
    reason: str = ""
    dispatch_id: str | None = None
    order_external_ref: str | None = None
    reply_to: str | None = None


@dataclass(frozen=True)
class RejectReport:
    """Answer an outside system's report that could not be read (its contract is broken)."""

    event_id: str
    consumer: str
    correlation_id: uuid.UUID
    source: str
    report: str  # "exception" or "progress"
    reasons: list[str]
    reply_to: str | None = None


@dataclass(frozen=True)
class Moved:
    """A dispatch after a change: what the API answers (with the approval it asked for)."""

    id: str
    order_id: str
    status: Status
    version: int
    approval: Approval | None = None


@dataclass(frozen=True)
class ExceptionChange:
    """An exception after a command, with its dispatch's state."""

    exception: ExceptionRecord
    dispatch: Moved


@dataclass(frozen=True)
class ApprovalChange:
    """An approval request after a command, with its dispatch's state."""

    approval: Approval
    dispatch: Moved


def _moved(dispatch: Dispatch, approval: Approval | None = None) -> Moved:
    return Moved(dispatch.id, dispatch.order_id, dispatch.status, dispatch.version, approval)


def _acting(cmd: Any) -> Actor:
    return Actor(id=cmd.actor_id, role=min(cmd.roles, default="none"))


def _locked(tx: DispatchTransaction, found: Dispatch | None, missing: str) -> Dispatch:
    if found is None:
        raise NotFound(missing)
    tx.correlation_id = found.correlation_id  # one correlation id per order journey
    return found


async def create_dispatch(cmd: CreateDispatch, uow: DispatchUnitOfWork) -> str | None:
    """Returns the new dispatch id, or None when the order already has its dispatch."""
    async with uow.begin(actor=SYSTEM_ACTOR, correlation_id=cmd.correlation_id,
                         causation_id=uuid.UUID(cmd.event_id),
                         inbox=(cmd.consumer, cmd.event_id)) as tx:
        dispatch = Dispatch.open_for(cmd.order, dispatch_id=str(uuid.uuid4()),
                                     correlation_id=cmd.correlation_id)
        # A second order.confirmed for the same order (a new event id, so the inbox let it
        # through) still makes no second dispatch; the unique order_id is the last word.
        parked = await tx.dispatches.add(dispatch)
        if parked is None:
            return None
        if parked:  # what arrived before the dispatch existed is applied to it now
            _apply_parked(dispatch, parked)
            await tx.dispatches.applied(parked)
            await tx.dispatches.save(dispatch)
        return dispatch.id


def _apply_parked(dispatch: Dispatch, parked: list[Parked]) -> None:
    now = datetime.now(UTC)
    for item in parked:
        if item.kind == PARKED_CANCELLATION:
            dispatch.cancel_for_order(item.payload["reason"], now=now, due_at=now + CANCEL_FOLLOW_UP)
        elif item.kind == PARKED_EXCEPTION and dispatch.status != Status.CANCELLED:
            _open_reported(dispatch, item.payload, now)


def _open_reported(dispatch: Dispatch, report: dict[str, Any], now: datetime) -> ExceptionRecord:
    due = datetime.fromisoformat(report["due_at"]) if report.get("due_at") else (
        now + PRODUCTION_FOLLOW_UP)
    return dispatch.open_exception(
        actor_id=report["source"], roles=frozenset({SYSTEM}), expected_version=None,
        reason_code=report["reason_code"], owner=report.get("owner") or PRODUCTION_OWNER,
        due_at=due, description=report["description"], blocking=report["blocking"])


async def transition_dispatch(cmd: TransitionDispatch, uow: DispatchUnitOfWork) -> Moved:
    """Apply one transition, or record the approval it needs; a refusal writes nothing."""
    async with uow.begin(actor=_acting(cmd)) as tx:
        dispatch = _locked(tx, await tx.dispatches.get(cmd.dispatch_id, for_update=True),
                                 f"no dispatch {cmd.dispatch_id}")
        approval = dispatch.move(cmd.to, actor_id=cmd.actor_id, roles=cmd.roles,
                                 expected_version=cmd.expected_version, reason=cmd.reason,
                                 evidence=cmd.evidence)
        await tx.dispatches.save(dispatch)
        return _moved(dispatch, approval)


async def cancel_for_order(cmd: CancelForOrder, uow: DispatchUnitOfWork) -> Status | None:
    """Cancel the order's dispatch as the system if the table allows it; returns its status
    (None: no dispatch yet, the cancellation is parked for it)."""
    async with uow.begin(actor=SYSTEM_ACTOR, correlation_id=cmd.correlation_id,
                         causation_id=uuid.UUID(cmd.event_id),
                         inbox=(cmd.consumer, cmd.event_id)) as tx:
        dispatch = await tx.dispatches.get_by_order(cmd.order_id, for_update=True)
        if dispatch is None:
            # order.cancelled overtook order.confirmed (separate queues): kept, and applied
            # when the dispatch opens. The parking is audited like any write.
            await tx.dispatches.park(Parked(
                id=str(uuid.uuid4()), kind=PARKED_CANCELLATION, order_id=cmd.order_id,
                payload={"reason": cmd.reason}, event_id=cmd.event_id))
            tx.collect(OrderCancellationParked(order_id=cmd.order_id, reason=cmd.reason))
            return None
        now = datetime.now(UTC)
        dispatch.cancel_for_order(cmd.reason, now=now, due_at=now + CANCEL_FOLLOW_UP)
        await tx.dispatches.save(dispatch)
        return dispatch.status


async def open_exception(cmd: OpenException, uow: DispatchUnitOfWork) -> ExceptionChange:
    async with uow.begin(actor=_acting(cmd)) as tx:
        dispatch = _locked(tx, await tx.dispatches.get(cmd.dispatch_id, for_update=True),
                                 f"no dispatch {cmd.dispatch_id}")
        record = dispatch.open_exception(
            actor_id=cmd.actor_id, roles=cmd.roles, expected_version=cmd.expected_version,
            reason_code=cmd.reason_code, owner=cmd.owner, due_at=cmd.due_at,
            description=cmd.description, blocking=cmd.blocking)
        await tx.dispatches.save(dispatch)
        return ExceptionChange(record, _moved(dispatch))


async def acknowledge_exception(cmd: AcknowledgeException, uow: DispatchUnitOfWork) -> ExceptionChange:
    async with uow.begin(actor=_acting(cmd)) as tx:
        dispatch = _locked(tx, await tx.dispatches.get_by_exception(cmd.exception_id),
                                 f"no exception {cmd.exception_id}")
        record = dispatch.acknowledge_exception(str(cmd.exception_id), actor_id=cmd.actor_id,
                                                roles=cmd.roles)
        await tx.dispatches.save(dispatch)
        return ExceptionChange(record, _moved(dispatch))


async def resolve_exception(cmd: ResolveException, uow: DispatchUnitOfWork) -> ExceptionChange:
    async with uow.begin(actor=_acting(cmd)) as tx:
        dispatch = _locked(tx, await tx.dispatches.get_by_exception(cmd.exception_id),
                                 f"no exception {cmd.exception_id}")
        record = dispatch.resolve_exception(str(cmd.exception_id), actor_id=cmd.actor_id,
                                            roles=cmd.roles, resolution=cmd.resolution)
        await tx.dispatches.save(dispatch)
        return ExceptionChange(record, _moved(dispatch))


async def request_correction(cmd: RequestCorrection, uow: DispatchUnitOfWork) -> Moved:
    async with uow.begin(actor=_acting(cmd)) as tx:
        dispatch = _locked(tx, await tx.dispatches.get(cmd.dispatch_id, for_update=True),
                                 f"no dispatch {cmd.dispatch_id}")
        approval = dispatch.request_correction(cmd.changes, actor_id=cmd.actor_id,
                                               roles=cmd.roles, reason=cmd.reason,
                                               expected_version=cmd.expected_version)
        await tx.dispatches.save(dispatch)
        return _moved(dispatch, approval)


async def decide_approval(cmd: DecideApproval, uow: DispatchUnitOfWork) -> ApprovalChange:
    async with uow.begin(actor=_acting(cmd)) as tx:
        dispatch = _locked(tx, await tx.dispatches.get_by_approval(cmd.approval_id),
                                 f"no approval {cmd.approval_id}")
        approval = dispatch.decide_approval(str(cmd.approval_id), approve=cmd.approve,
                                            actor_id=cmd.actor_id, roles=cmd.roles, note=cmd.note)
        await tx.dispatches.save(dispatch)
        return ApprovalChange(approval, _moved(dispatch))


async def escalate_overdue(cmd: EscalateOverdue, uow: DispatchUnitOfWork) -> int:
    """Escalate what is due, one dispatch per transaction; returns how many exceptions.

    The database is the timer: what is due is read from the exceptions' `due_at`, and each
    dispatch is re-read under its lock before anything is escalated, so a tick after a crash
    escalates what the last one did not, and two replicas ticking at once escalate each
    exception once (the second finds it escalated and writes nothing).
    """
    now = cmd.now or datetime.now(UTC)
    async with uow.begin(actor=SYSTEM_ACTOR) as tx:
        due = await tx.dispatches.overdue(now, limit=cmd.limit)
    escalated = 0
    for dispatch_id in due:
        async with uow.begin(actor=SYSTEM_ACTOR) as tx:
            dispatch = await tx.dispatches.get(dispatch_id, for_update=True)
            if dispatch is None:
                continue
            tx.correlation_id = dispatch.correlation_id
            escalated += len(dispatch.escalate_overdue(now))
            await tx.dispatches.save(dispatch)
    return escalated


async def report_production_exception(cmd: ReportProductionException,
                                      uow: DispatchUnitOfWork) -> str | None:
    """Open the reported exception on the order's dispatch; the new exception's id.

    An order with no dispatch yet (still on its way, or unknown) is parked and answered: the
    report is applied if that dispatch opens. A report the dispatch refuses (a reason code not
    on the list, a cancelled dispatch) is answered with the reasons, then `Refusal` is raised
    again so that the message is dead-lettered for ops as well.
    """
    report = {"source": cmd.source, "reason_code": cmd.reason_code,
              "description": cmd.description, "blocking": cmd.blocking, "owner": cmd.owner,
              "due_at": cmd.due_at.isoformat() if cmd.due_at else None}
    try:
        async with _report(uow, cmd, cmd.actor) as tx:
            dispatch = await (tx.dispatches.get_by_order(cmd.order_id, for_update=True)
                              if cmd.order_id else
                              tx.dispatches.get_by_ref(cmd.source, cmd.order_external_ref or ""))
            if dispatch is not None:
                tx.correlation_id = dispatch.correlation_id
                record = _open_reported(dispatch, report, datetime.now(UTC))
                await tx.dispatches.save(dispatch)
                return record.id
            await tx.dispatches.park(Parked(
                id=str(uuid.uuid4()), kind=PARKED_EXCEPTION, payload=report,
                event_id=cmd.event_id, order_id=cmd.order_id,
                source=cmd.source if cmd.order_external_ref else None,
                external_ref=cmd.order_external_ref))
            named = (f"order {cmd.order_id}" if cmd.order_id else
                     f"order {cmd.order_external_ref!r} of {cmd.source}")
            tx.collect(ReportRejected(
                report="exception", source=cmd.source, message_id=cmd.event_id, parked=True,
                reasons=[f"no dispatch for {named} yet: the report is kept and applied when "
                         "that order's dispatch opens"],
                order_id=cmd.order_id, order_external_ref=cmd.order_external_ref))
            return None
    except Refusal as refusal:
        async with _report(uow, cmd, cmd.actor) as tx:
            tx.collect(ReportRejected(report="exception", source=cmd.source,
                                      message_id=cmd.event_id, reasons=_reasons(refusal),
                                      order_id=cmd.order_id,
                                      order_external_ref=cmd.order_external_ref))
        raise


async def report_progress(cmd: ReportProgress, uow: DispatchUnitOfWork) -> Moved | None:
    """Apply the reported move as the system's configured role, through the table; a refused
    one is answered with `dispatch.progress.rejected` and changes nothing else."""
    actor = Actor(id=cmd.source, role=cmd.role or SYSTEM)
    try:
        async with _report(uow, cmd, actor) as tx:
            if cmd.role is None:
                raise Refusal(f"system {cmd.source} has no role here: SPINE_SYSTEM_ROLES names "
                              "none for it, so it may not move dispatches")
            try:
                target = Status(cmd.to)
            except ValueError:
                raise Refusal(f"to {cmd.to!r} is not one of {[s.value for s in Status]}") from None
            if cmd.dispatch_id:
                try:
                    found = await tx.dispatches.get(uuid.UUID(cmd.dispatch_id), for_update=True)
                except ValueError:
                    raise Refusal(f"dispatch_id {cmd.dispatch_id!r} is not a UUID") from None
            else:
                found = await tx.dispatches.get_by_ref(cmd.source, cmd.order_external_ref or "")
            dispatch = _locked(tx, found, "no dispatch " + (
                cmd.dispatch_id or f"for order {cmd.order_external_ref!r} of {cmd.source}"))
            approval = dispatch.move(target, actor_id=cmd.source, roles=frozenset({cmd.role}),
                                     expected_version=None, evidence=cmd.evidence,
                                     reason=cmd.reason or f"reported by {cmd.source}")
            await tx.dispatches.save(dispatch)
            return _moved(dispatch, approval)
    except Refusal as refusal:
        async with _report(uow, cmd, actor) as tx:
            tx.collect(ReportRejected(
                report="progress", source=cmd.source, message_id=cmd.event_id, to=cmd.to,
                reasons=_reasons(refusal), dispatch_id=cmd.dispatch_id,
                order_external_ref=cmd.order_external_ref))
        return None


async def reject_report(cmd: RejectReport, uow: DispatchUnitOfWork) -> None:
    """Answer a report whose message could not be read (then it is dead-lettered)."""
    async with uow.begin(actor=Actor(id=cmd.source, role=SYSTEM),
                         correlation_id=cmd.correlation_id, inbox=(cmd.consumer, cmd.event_id),
                         reply_to=cmd.reply_to) as tx:
        tx.collect(ReportRejected(report=cmd.report, source=cmd.source, message_id=cmd.event_id,
                                  reasons=cmd.reasons))


def _report(uow: DispatchUnitOfWork, cmd: Any, actor: Actor) -> Any:
    """The unit of work of one outside report: its inbox row, its journey, its reply queue."""
    return uow.begin(actor=actor, correlation_id=cmd.correlation_id,
                     causation_id=uuid.UUID(cmd.event_id), inbox=(cmd.consumer, cmd.event_id),
                     reply_to=cmd.reply_to)


def _reasons(refusal: Refusal) -> list[str]:
    problems = getattr(refusal, "problems", None)
    return list(problems) if problems else [refusal.detail]


Handler = Callable[[Any, DispatchUnitOfWork], Awaitable[Any]]

# Command type → handler: the edges build a command and hand it here.
HANDLERS: dict[type[Any], Handler] = {
    CreateDispatch: create_dispatch,
    TransitionDispatch: transition_dispatch,
    CancelForOrder: cancel_for_order,
    OpenException: open_exception,
    AcknowledgeException: acknowledge_exception,
    ResolveException: resolve_exception,
    RequestCorrection: request_correction,
    DecideApproval: decide_approval,
    EscalateOverdue: escalate_overdue,
    ReportProductionException: report_production_exception,
    ReportProgress: report_progress,
    RejectReport: reject_report,
}


async def handle(cmd: Any, uow: DispatchUnitOfWork) -> Any:
    """Run the handler of `cmd`'s type."""
    return await HANDLERS[type(cmd)](cmd, uow)
