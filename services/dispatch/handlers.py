"""Dispatch use cases: each takes a command and the unit of work, and commits one effect."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from services.dispatch import publishers
from services.dispatch.domain import (
    TRANSITIONS,
    Dispatch,
    NotFound,
    Status,
    decide,
)
from services.dispatch.repository import SqlAlchemyDispatchRepository
from shared.contracts.envelope import Actor
from shared.uow import UnitOfWork

SYSTEM = Actor(id="dispatch", role="system")


@dataclass(frozen=True)
class CreateDispatch:
    """Open the one dispatch of a confirmed order."""

    event_id: str
    consumer: str
    correlation_id: uuid.UUID
    order_id: str
    external_ref: str | None
    source: str | None
    customer_id: str
    requested_ship_date: Any
    priority: str
    ship_to: dict[str, Any]
    lines: list[dict[str, Any]]


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


async def create_dispatch(cmd: CreateDispatch, uow: UnitOfWork) -> str | None:
    """Returns the new dispatch id, or None when the order already has its dispatch."""
    dispatch_id = uuid.uuid4()
    async with uow.begin(
        actor=SYSTEM,
        correlation_id=cmd.correlation_id,
        causation_id=uuid.UUID(cmd.event_id),
        inbox=(cmd.consumer, cmd.event_id),
    ) as tx:
        created = await SqlAlchemyDispatchRepository(tx.conn).add(
            {
                "id": dispatch_id,
                "order_id": cmd.order_id,
                "external_ref": cmd.external_ref,
                "source": cmd.source,
                "correlation_id": cmd.correlation_id,
                "customer_id": cmd.customer_id,
                "requested_ship_date": cmd.requested_ship_date,
                "priority": cmd.priority,
                "ship_to": cmd.ship_to,
                "lines": cmd.lines,
                "status": Status.PENDING.value,
                "version": 1,
            }
        )
        if not created:
            # A second order.confirmed for the same order (a new event id, so the inbox let it
            # through) still makes no second dispatch; the unique order_id is the last word.
            return None
        tx.record(
            action="dispatch.created",
            entity_type="dispatch",
            entity_id=str(dispatch_id),
            to_state=Status.PENDING.value,
            details={"order_id": cmd.order_id, "version": 1},
        )
        tx.emit(*publishers.dispatch_created(
            dispatch_id=str(dispatch_id), order_id=cmd.order_id, status=Status.PENDING.value
        ))
    return str(dispatch_id)


async def transition_dispatch(cmd: TransitionDispatch, uow: UnitOfWork) -> dict[str, Any]:
    """Apply one transition; raises a domain error (nothing written) when it is refused."""
    actor = Actor(id=cmd.actor_id, role=_acting_role(cmd))
    async with uow.begin(actor=actor) as tx:
        repo = SqlAlchemyDispatchRepository(tx.conn)
        entity = await repo.get(cmd.dispatch_id, for_update=True)
        if entity is None:
            raise NotFound(f"no dispatch {cmd.dispatch_id}")
        # One correlation id per order journey: the one order.confirmed brought.
        tx.correlation_id = entity.correlation_id
        decision = decide(
            entity,
            cmd.to,
            roles=cmd.roles,
            actor_id=cmd.actor_id,
            expected_version=cmd.expected_version,
            reason=cmd.reason,
            evidence=cmd.evidence,
        )
        facts = _facts_of(entity, cmd.to, decision.evidence)
        version = await repo.save_transition(entity, new_status=cmd.to, facts=facts)
        tx.record(
            action=f"dispatch.{cmd.to.value}",
            entity_type="dispatch",
            entity_id=entity.id,
            from_state=entity.status.value,
            to_state=cmd.to.value,
            reason=cmd.reason or None,
            details={"version": version, "evidence": decision.evidence,
                     "short_lines": decision.short_lines},
        )
        tx.emit(*publishers.dispatch_transitioned(
            dispatch_id=entity.id,
            order_id=entity.order_id,
            version=version,
            from_status=entity.status.value,
            status=cmd.to.value,
            reason=cmd.reason,
            evidence=decision.evidence,
        ))
    return {"id": entity.id, "order_id": entity.order_id, "status": cmd.to.value,
            "version": version}


async def cancel_for_order(cmd: CancelForOrder, uow: UnitOfWork) -> Status | None:
    """Cancel the order's dispatch as `system` if the table allows it; otherwise leave it be."""
    async with uow.begin(
        actor=SYSTEM,
        correlation_id=cmd.correlation_id,
        causation_id=uuid.UUID(cmd.event_id),
        inbox=(cmd.consumer, cmd.event_id),
    ) as tx:
        repo = SqlAlchemyDispatchRepository(tx.conn)
        entity = await repo.get_by_order(cmd.order_id, for_update=True)
        if entity is None:
            # order.cancelled overtook order.confirmed (separate queues): retry shortly.
            raise LookupError(f"no dispatch yet for cancelled order {cmd.order_id}")
        rule = TRANSITIONS.get((entity.status, Status.CANCELLED))
        if rule is None or "system" not in rule.roles:
            tx.record(
                action="dispatch.cancel_refused",
                entity_type="dispatch",
                entity_id=entity.id,
                from_state=entity.status.value,
                to_state=entity.status.value,
                reason=f"order cancelled while dispatch is {entity.status}: "
                       "a supervisor must cancel it with a second approval",
            )
            return None
        version = await repo.save_transition(entity, new_status=Status.CANCELLED, facts={})
        tx.record(
            action="dispatch.cancelled",
            entity_type="dispatch",
            entity_id=entity.id,
            from_state=entity.status.value,
            to_state=Status.CANCELLED.value,
            reason=cmd.reason or "order cancelled",
            details={"version": version},
        )
        tx.emit(*publishers.dispatch_transitioned(
            dispatch_id=entity.id, order_id=entity.order_id, version=version,
            from_status=entity.status.value, status=Status.CANCELLED.value,
            reason=cmd.reason or "order cancelled", evidence={},
        ))
    return Status.CANCELLED


def _acting_role(cmd: TransitionDispatch) -> str:
    """The role the audit names: one of the caller's roles that the table allows for the target."""
    for rule in TRANSITIONS.values():
        if rule.target == cmd.to:
            for role in sorted(rule.roles & cmd.roles):
                return role
    return min(cmd.roles) if cmd.roles else "none"


def _facts_of(entity: Dispatch, target: Status, evidence: dict[str, Any]) -> dict[str, Any]:
    if target == Status.PACKED:
        return {"packed_lines": evidence["lines"]}
    if target == Status.SHIPPED:
        return {"carrier": evidence["carrier"], "tracking_number": evidence["tracking_number"]}
    if target == Status.ON_HOLD:
        return {"hold_reason_code": evidence["reason_code"], "hold_owner": evidence["owner"],
                "hold_due_at": evidence["due_at"]}
    return {}

