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
    SYSTEM_ACTOR,
    Approval,
    Dispatch,
    ExceptionRecord,
    OrderSnapshot,
    Status,
)
from services.dispatch.unit_of_work import DispatchTransaction, DispatchUnitOfWork
from shared.domain import Actor
from shared.workflow import NotFound, StaleVersion

# How long a supervisor has to decide on an order cancelled after picking began.
CANCEL_FOLLOW_UP = timedelta(hours=4)


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


async def _locked(tx: DispatchTransaction, found: Dispatch | None, missing: str) -> Dispatch:
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
        if not await tx.dispatches.add(dispatch):
            return None
        return dispatch.id


async def transition_dispatch(cmd: TransitionDispatch, uow: DispatchUnitOfWork) -> Moved:
    """Apply one transition, or record the approval it needs; a refusal writes nothing."""
    async with uow.begin(actor=_acting(cmd)) as tx:
        dispatch = await _locked(tx, await tx.dispatches.get(cmd.dispatch_id, for_update=True),
                                 f"no dispatch {cmd.dispatch_id}")
        approval = dispatch.move(cmd.to, actor_id=cmd.actor_id, roles=cmd.roles,
                                 expected_version=cmd.expected_version, reason=cmd.reason,
                                 evidence=cmd.evidence)
        await tx.dispatches.save(dispatch)
        return _moved(dispatch, approval)


async def cancel_for_order(cmd: CancelForOrder, uow: DispatchUnitOfWork) -> Status:
    """Cancel the order's dispatch as the system if the table allows it; returns its status."""
    async with uow.begin(actor=SYSTEM_ACTOR, correlation_id=cmd.correlation_id,
                         causation_id=uuid.UUID(cmd.event_id),
                         inbox=(cmd.consumer, cmd.event_id)) as tx:
        dispatch = await tx.dispatches.get_by_order(cmd.order_id, for_update=True)
        if dispatch is None:
            # order.cancelled overtook order.confirmed (separate queues): retry shortly.
            raise LookupError(f"no dispatch yet for cancelled order {cmd.order_id}")
        now = datetime.now(UTC)
        dispatch.cancel_for_order(cmd.reason, now=now, due_at=now + CANCEL_FOLLOW_UP)
        await tx.dispatches.save(dispatch)
        return dispatch.status


async def open_exception(cmd: OpenException, uow: DispatchUnitOfWork) -> ExceptionChange:
    async with uow.begin(actor=_acting(cmd)) as tx:
        dispatch = await _locked(tx, await tx.dispatches.get(cmd.dispatch_id, for_update=True),
                                 f"no dispatch {cmd.dispatch_id}")
        record = dispatch.open_exception(
            actor_id=cmd.actor_id, roles=cmd.roles, expected_version=cmd.expected_version,
            reason_code=cmd.reason_code, owner=cmd.owner, due_at=cmd.due_at,
            description=cmd.description, blocking=cmd.blocking)
        await tx.dispatches.save(dispatch)
        return ExceptionChange(record, _moved(dispatch))


async def acknowledge_exception(cmd: AcknowledgeException, uow: DispatchUnitOfWork) -> ExceptionChange:
    async with uow.begin(actor=_acting(cmd)) as tx:
        dispatch = await _locked(tx, await tx.dispatches.get_by_exception(cmd.exception_id),
                                 f"no exception {cmd.exception_id}")
        record = dispatch.acknowledge_exception(str(cmd.exception_id), actor_id=cmd.actor_id,
                                                roles=cmd.roles)
        await tx.dispatches.save(dispatch)
        return ExceptionChange(record, _moved(dispatch))


async def resolve_exception(cmd: ResolveException, uow: DispatchUnitOfWork) -> ExceptionChange:
    async with uow.begin(actor=_acting(cmd)) as tx:
        dispatch = await _locked(tx, await tx.dispatches.get_by_exception(cmd.exception_id),
                                 f"no exception {cmd.exception_id}")
        record = dispatch.resolve_exception(str(cmd.exception_id), actor_id=cmd.actor_id,
                                            roles=cmd.roles, resolution=cmd.resolution)
        await tx.dispatches.save(dispatch)
        return ExceptionChange(record, _moved(dispatch))


async def request_correction(cmd: RequestCorrection, uow: DispatchUnitOfWork) -> Moved:
    async with uow.begin(actor=_acting(cmd)) as tx:
        dispatch = await _locked(tx, await tx.dispatches.get(cmd.dispatch_id, for_update=True),
                                 f"no dispatch {cmd.dispatch_id}")
        if cmd.expected_version is not None and cmd.expected_version != dispatch.version:
            raise StaleVersion(f"dispatch is at version {dispatch.version}, "
                               f"not {cmd.expected_version}")
        approval = dispatch.request_correction(cmd.changes, actor_id=cmd.actor_id,
                                               roles=cmd.roles, reason=cmd.reason)
        await tx.dispatches.save(dispatch)
        return _moved(dispatch, approval)


async def decide_approval(cmd: DecideApproval, uow: DispatchUnitOfWork) -> ApprovalChange:
    async with uow.begin(actor=_acting(cmd)) as tx:
        dispatch = await _locked(tx, await tx.dispatches.get_by_approval(cmd.approval_id),
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
}


async def handle(cmd: Any, uow: DispatchUnitOfWork) -> Any:
    """Run the handler of `cmd`'s type."""
    return await HANDLERS[type(cmd)](cmd, uow)
