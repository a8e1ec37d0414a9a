"""Dispatch use cases: each takes a command and the unit of work, and commits one effect.

Handlers load aggregates through `tx.dispatches`, ask them to change, and return; the unit of
work writes the audit and outbox rows of what the aggregates recorded.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from services.dispatch.domain import SYSTEM_ACTOR, Dispatch, OrderSnapshot, Status
from services.dispatch.unit_of_work import DispatchUnitOfWork
from shared.domain import Actor
from shared.workflow import NotFound


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
class Moved:
    """A dispatch after a transition: what the API answers."""

    id: str
    order_id: str
    status: Status
    version: int


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
    """Apply one transition; raises a refusal (nothing written) when the table says no."""
    async with uow.begin(actor=Actor(id=cmd.actor_id, role=min(cmd.roles, default="none"))) as tx:
        dispatch = await tx.dispatches.get(cmd.dispatch_id, for_update=True)
        if dispatch is None:
            raise NotFound(f"no dispatch {cmd.dispatch_id}")
        tx.correlation_id = dispatch.correlation_id  # one correlation id per order journey
        dispatch.move(cmd.to, actor_id=cmd.actor_id, roles=cmd.roles,
                      expected_version=cmd.expected_version, reason=cmd.reason,
                      evidence=cmd.evidence)
        await tx.dispatches.save(dispatch)
        return Moved(dispatch.id, dispatch.order_id, dispatch.status, dispatch.version)


async def cancel_for_order(cmd: CancelForOrder, uow: DispatchUnitOfWork) -> Status:
    """Cancel the order's dispatch as the system if the table allows it; returns its status."""
    async with uow.begin(actor=SYSTEM_ACTOR, correlation_id=cmd.correlation_id,
                         causation_id=uuid.UUID(cmd.event_id),
                         inbox=(cmd.consumer, cmd.event_id)) as tx:
        dispatch = await tx.dispatches.get_by_order(cmd.order_id, for_update=True)
        if dispatch is None:
            # order.cancelled overtook order.confirmed (separate queues): retry shortly.
            raise LookupError(f"no dispatch yet for cancelled order {cmd.order_id}")
        before = dispatch.version
        dispatch.cancel_for_order(cmd.reason)
        if dispatch.version != before:
            await tx.dispatches.save(dispatch)
        return dispatch.status


Handler = Callable[[Any, DispatchUnitOfWork], Awaitable[Any]]

# Command type → handler: the edges build a command and hand it here.
HANDLERS: dict[type[Any], Handler] = {
    CreateDispatch: create_dispatch,
    TransitionDispatch: transition_dispatch,
    CancelForOrder: cancel_for_order,
}


async def handle(cmd: Any, uow: DispatchUnitOfWork) -> Any:
    """Run the handler of `cmd`'s type."""
    return await HANDLERS[type(cmd)](cmd, uow)
