"""Order use cases: each takes a command and the unit of work, and commits one effect."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.order import publishers
from services.order.domain import (
    SYSTEM,
    ExternalRefTaken,
    InvalidOrder,
    LineRef,
    NotFound,
    Order,
    OrderDraft,
    OrderError,
    Status,
    acting_role,
    check_order,
    check_references,
    decide,
    decide_creation,
    person_roles,
    provenance_problems,
)
from services.order.repository import (
    SqlAlchemyIdempotencyStore,
    SqlAlchemyOrderRepository,
    SqlAlchemyReplicaRepository,
)
from shared.contracts.envelope import Actor
from shared.uow import ConnTransaction, UnitOfWork

# The HTTP status a stored Idempotency-Key response replays: an order was created.
CREATED = 201


class IdempotencyKeyReused(OrderError):
    """The same Idempotency-Key came back with a different request."""


# ---------------------------------------------------------------------------- commands


@dataclass(frozen=True)
class SubmitOrder:
    """Take in an order an outside system published on `ext.<source>.order.submitted`."""

    event_id: uuid.UUID
    consumer: str
    correlation_id: uuid.UUID
    actor: Actor
    source: str
    producer: str
    external_ref: str | None
    draft: OrderDraft | None  # None: the data broke the contract, see `problems`
    confirm: bool = False
    problems: Sequence[str] = ()
    # What a contract-breaking submission still names, so its answer lists every problem at once.
    customer_ref: str | None = None
    line_refs: Sequence[LineRef] = ()


@dataclass(frozen=True)
class PlaceOrder:
    """Create an order on behalf of a person using the API."""

    actor_id: str
    roles: frozenset[str]
    draft: OrderDraft
    request_hash: str
    idempotency_key: str | None = None


@dataclass(frozen=True)
class ConfirmOrder:
    order_id: uuid.UUID
    actor_id: str
    roles: frozenset[str]
    expected_version: int | None = None


@dataclass(frozen=True)
class CancelOrder:
    order_id: uuid.UUID
    actor_id: str
    roles: frozenset[str]
    reason: str
    expected_version: int | None = None


@dataclass(frozen=True)
class ReplicateCustomer:
    """Keep the ERP's view of a customer (newest version wins)."""

    event_id: uuid.UUID
    consumer: str
    correlation_id: uuid.UUID
    actor: Actor
    customer_id: str
    name: str
    active: bool
    version: int


@dataclass(frozen=True)
class ReplicateProduct:
    """Keep the ERP's view of a product (newest version wins)."""

    event_id: uuid.UUID
    consumer: str
    correlation_id: uuid.UUID
    actor: Actor
    product_id: str
    name: str
    uom: str
    active: bool
    version: int


@dataclass(frozen=True)
class PlacedOrder:
    """What POST /orders answers, the first time and on every replay of its Idempotency-Key."""

    status: int
    body: dict[str, Any]
    replayed: bool = False


# ---------------------------------------------------------------------------- use cases


async def submit_order(cmd: SubmitOrder, uow: UnitOfWork) -> str:
    """Accept, confirm, reject or ignore (as a duplicate) one submission; returns which."""
    async with uow.begin(
        actor=cmd.actor,
        correlation_id=cmd.correlation_id,
        causation_id=cmd.event_id,
        inbox=(cmd.consumer, str(cmd.event_id)),
    ) as tx:
        reasons = provenance_problems(cmd.source, cmd.producer) + list(cmd.problems)
        draft = cmd.draft
        repo = SqlAlchemyOrderRepository(tx.conn)
        if draft is None:
            if cmd.customer_ref or cmd.line_refs:
                customer, products = await repo.references(
                    cmd.customer_ref, [line.product_id for line in cmd.line_refs]
                )
                reasons += check_references(cmd.customer_ref, cmd.line_refs, customer, products)
            _reject(tx, cmd, reasons)
            return "rejected"
        facts = await repo.facts_for(draft)
        if facts.existing_order_id is not None and not reasons:
            _ignore_duplicate(tx, cmd, facts.existing_order_id)
            return "duplicate"
        reasons += check_order(draft, facts.customer, facts.products)
        if reasons:
            _reject(tx, cmd, reasons)
            return "rejected"

        decide_creation(frozenset({SYSTEM}))
        order = _new_order(draft, tx, created_by=cmd.actor.id)
        if cmd.confirm:
            # The sales system confirmed it already: both steps commit together, so no one ever
            # sees this order unconfirmed, yet the audit and the events still show both.
            decide(order, Status.CONFIRMED, roles=frozenset({SYSTEM}))
            order.status, order.version = Status.CONFIRMED, 2
        if not await repo.add(order):
            # Another delivery of the same reference committed between our read and our insert.
            existing = await repo.find_id(draft.source, draft.external_ref or "")
            _ignore_duplicate(tx, cmd, existing)
            return "duplicate"
        _record_received(tx, order)
        if cmd.confirm:
            _record_status_change(tx, order, Status.RECEIVED, Status.CONFIRMED,
                                  version=order.version)
            tx.emit(*publishers.order_confirmed(order, version=order.version))
        return order.status.value


async def place_order(cmd: PlaceOrder, uow: UnitOfWork) -> PlacedOrder:
    """Create an order from the API, once per Idempotency-Key; refusals write nothing."""
    roles = person_roles(cmd.roles)
    decide_creation(roles)
    actor = Actor(id=cmd.actor_id, role=acting_role(Status.RECEIVED, roles))
    async with uow.begin(actor=actor) as tx:
        store = SqlAlchemyIdempotencyStore(tx.conn)
        if cmd.idempotency_key is not None:
            stored = await store.claim(cmd.actor_id, cmd.idempotency_key, cmd.request_hash)
            if stored is not None:
                if stored.request_hash != cmd.request_hash:
                    raise IdempotencyKeyReused(
                        f"Idempotency-Key {cmd.idempotency_key!r} was already used for a "
                        "different request; send a new key for a new order"
                    )
                return PlacedOrder(stored.status, stored.body, replayed=True)
        repo = SqlAlchemyOrderRepository(tx.conn)
        draft = cmd.draft
        facts = await repo.facts_for(draft)
        if facts.existing_order_id is not None:
            raise ExternalRefTaken(draft.external_ref or "", str(facts.existing_order_id))
        reasons = check_order(draft, facts.customer, facts.products)
        if reasons:
            raise InvalidOrder(reasons)
        order = _new_order(draft, tx, created_by=cmd.actor_id)
        if not await repo.add(order):
            existing = await repo.find_id(None, draft.external_ref or "")
            raise ExternalRefTaken(draft.external_ref or "", str(existing))
        _record_received(tx, order)
        body = order_view(order)
        if cmd.idempotency_key is not None:
            await store.complete(cmd.actor_id, cmd.idempotency_key, CREATED, body)
    return PlacedOrder(CREATED, body)


async def confirm_order(cmd: ConfirmOrder, uow: UnitOfWork) -> Order:
    """received → confirmed; publishes the snapshot the dispatch service works from."""
    return await _change_status(
        cmd.order_id, Status.CONFIRMED, actor_id=cmd.actor_id, roles=cmd.roles,
        expected_version=cmd.expected_version, reason="", uow=uow,
    )


async def cancel_order(cmd: CancelOrder, uow: UnitOfWork) -> Order:
    """received or confirmed → cancelled, with a reason."""
    return await _change_status(
        cmd.order_id, Status.CANCELLED, actor_id=cmd.actor_id, roles=cmd.roles,
        expected_version=cmd.expected_version, reason=cmd.reason, uow=uow,
    )


async def replicate_customer(cmd: ReplicateCustomer, uow: UnitOfWork) -> str | None:
    """'inserted' or 'updated', or None when the replica already holds this version or newer."""
    async with uow.begin(
        actor=cmd.actor,
        correlation_id=cmd.correlation_id,
        causation_id=cmd.event_id,
        inbox=(cmd.consumer, str(cmd.event_id)),
    ) as tx:
        outcome = await SqlAlchemyReplicaRepository(tx.conn).upsert_customer(
            customer_id=cmd.customer_id, name=cmd.name, active=cmd.active, version=cmd.version
        )
        if outcome is not None:
            _record_replica(tx, "customer", cmd.customer_id, outcome, active=cmd.active,
                            details={"name": cmd.name, "version": cmd.version})
    return outcome


async def replicate_product(cmd: ReplicateProduct, uow: UnitOfWork) -> str | None:
    """'inserted' or 'updated', or None when the replica already holds this version or newer."""
    async with uow.begin(
        actor=cmd.actor,
        correlation_id=cmd.correlation_id,
        causation_id=cmd.event_id,
        inbox=(cmd.consumer, str(cmd.event_id)),
    ) as tx:
        outcome = await SqlAlchemyReplicaRepository(tx.conn).upsert_product(
            product_id=cmd.product_id, name=cmd.name, uom=cmd.uom, active=cmd.active,
            version=cmd.version,
        )
        if outcome is not None:
            _record_replica(tx, "product", cmd.product_id, outcome, active=cmd.active,
                            details={"name": cmd.name, "uom": cmd.uom, "version": cmd.version})
    return outcome


def order_view(order: Order) -> dict[str, Any]:
    """An order as the API returns it (and as an Idempotency-Key replay returns it)."""
    return {
        "id": str(order.id),
        "status": order.status.value,
        "version": order.version,
        "source": order.source,
        "external_ref": order.external_ref,
        "customer_id": order.customer_id,
        "requested_ship_date": order.requested_ship_date.isoformat(),
        "priority": order.priority,
        "ship_to": dict(order.ship_to),
        "lines": [
            {"line_no": x.line_no, "product_id": x.product_id, "quantity": str(x.quantity),
             "uom": x.uom}
            for x in order.lines
        ],
        "correlation_id": str(order.correlation_id),
        "created_by": order.created_by,
        "created_at": order.created_at.isoformat() if order.created_at else None,
        "updated_at": order.updated_at.isoformat() if order.updated_at else None,
    }


# ---------------------------------------------------------------------------- helpers


async def _change_status(
    order_id: uuid.UUID,
    target: Status,
    *,
    actor_id: str,
    roles: frozenset[str],
    expected_version: int | None,
    reason: str,
    uow: UnitOfWork,
) -> Order:
    roles = person_roles(roles)
    actor = Actor(id=actor_id, role=acting_role(target, roles))
    async with uow.begin(actor=actor) as tx:
        repo = SqlAlchemyOrderRepository(tx.conn)
        order = await repo.get(order_id, for_update=True)
        if order is None:
            raise NotFound(f"no order {order_id}")
        # One correlation id per order journey: the one the order was created with.
        tx.correlation_id = order.correlation_id
        decide(order, target, roles=roles, expected_version=expected_version, reason=reason)
        previous = order.status
        order.version, order.updated_at = await repo.save_status(order, target)
        order.status = target
        _record_status_change(tx, order, previous, target, version=order.version,
                              reason=reason.strip() or None)
        if target == Status.CONFIRMED:
            tx.emit(*publishers.order_confirmed(order, version=order.version))
        else:
            tx.emit(*publishers.order_cancelled(order, version=order.version,
                                                reason=reason.strip()))
    return order


def _new_order(draft: OrderDraft, tx: ConnTransaction, *, created_by: str) -> Order:
    return Order(
        id=uuid.uuid4(),
        status=Status.RECEIVED,
        version=1,
        customer_id=draft.customer_id,
        requested_ship_date=draft.requested_ship_date,
        priority=draft.priority,
        ship_to=dict(draft.ship_to),
        lines=list(draft.lines),
        correlation_id=tx.correlation_id,
        created_by=created_by,
        source=draft.source,
        external_ref=draft.external_ref,
    )


def _record_received(tx: ConnTransaction, order: Order) -> None:
    tx.record(
        action="order.received",
        entity_type="order",
        entity_id=str(order.id),
        to_state=Status.RECEIVED.value,
        details={"version": 1, "source": order.source, "external_ref": order.external_ref,
                 "customer_id": order.customer_id, "lines": len(order.lines)},
    )
    tx.emit(*publishers.order_received(order, version=1))


def _record_status_change(
    tx: ConnTransaction,
    order: Order,
    previous: Status,
    target: Status,
    *,
    version: int,
    reason: str | None = None,
) -> None:
    tx.record(
        action=f"order.{target.value}",
        entity_type="order",
        entity_id=str(order.id),
        from_state=previous.value,
        to_state=target.value,
        reason=reason,
        details={"version": version},
    )


def _reject(tx: ConnTransaction, cmd: SubmitOrder, reasons: list[str]) -> None:
    # No order exists, so the audit row is about the submission: system and reference.
    tx.record(
        action="order.rejected",
        entity_type="order_submission",
        entity_id=f"{cmd.source}:{cmd.external_ref or cmd.event_id}",
        reason="; ".join(reasons),
        details={"source": cmd.source, "external_ref": cmd.external_ref, "reasons": reasons,
                 "event_id": str(cmd.event_id)},
    )
    tx.emit(*publishers.order_rejected(
        external_ref=cmd.external_ref, source=cmd.source, reasons=reasons
    ))


def _ignore_duplicate(tx: ConnTransaction, cmd: SubmitOrder, order_id: uuid.UUID | None) -> None:
    tx.record(
        action="order.submission_duplicate",
        entity_type="order",
        entity_id=str(order_id),
        reason=f"duplicate submission ignored: {cmd.source} reference {cmd.external_ref!r} "
               f"is already order {order_id}",
        details={"source": cmd.source, "external_ref": cmd.external_ref,
                 "event_id": str(cmd.event_id)},
    )


def _record_replica(
    tx: ConnTransaction, kind: str, entity_id: str, outcome: str, *, active: bool,
    details: dict[str, Any],
) -> None:
    tx.record(
        action=f"{kind}.{outcome}",
        entity_type=kind,
        entity_id=entity_id,
        to_state="active" if active else "inactive",
        details=details,
    )
