"""Order use cases: each takes a command and the unit of work, and commits one effect.

Handlers read and add orders through `tx.orders`, ask them to change, and return; the unit of
work writes the audit and outbox rows of what the orders recorded, and of the events collected
for what creates no order (a rejected or repeated submission, a replica update).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from services.order.domain import (
    SYSTEM_ROLES,
    WORKFLOW,
    CustomerReplicated,
    LineRef,
    Order,
    OrderDraft,
    ProductReplicated,
    ReplicaOutcome,
    Status,
    SubmissionIgnored,
    SubmissionRejected,
    check_order,
    check_references,
    person_roles,
    provenance_problems,
)
from services.order.unit_of_work import OrderTransaction, OrderUnitOfWork
from shared.contracts.envelope import ActorLike
from shared.domain import Actor
from shared.workflow import Conflict, InvalidInput, NotFound

# ---------------------------------------------------------------------------- commands


@dataclass(frozen=True)
class SubmitOrder:
    """Take in an order an outside system published on `ext.<source>.order.submitted`."""

    event_id: uuid.UUID
    consumer: str
    correlation_id: uuid.UUID
    actor: ActorLike
    source: str
    producer: str
    draft: OrderDraft
    confirm: bool = False
    # The AMQP queue the sender named for answers: `order.received` (or `rejected`) goes there too.
    reply_to: str | None = None


@dataclass(frozen=True)
class RejectSubmission:
    """Answer a submission whose data broke the contract; `problems` say how, one per line."""

    event_id: uuid.UUID
    consumer: str
    correlation_id: uuid.UUID
    actor: ActorLike
    source: str
    producer: str
    external_ref: str | None
    problems: Sequence[str]
    # What the submission still names, so that its answer lists every problem at once.
    customer_ref: str | None = None
    line_refs: Sequence[LineRef] = ()
    reply_to: str | None = None


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
    """received → confirmed, on behalf of a person."""

    order_id: uuid.UUID
    actor_id: str
    roles: frozenset[str]
    expected_version: int | None = None


@dataclass(frozen=True)
class CancelOrder:
    """received or confirmed → cancelled, with a reason, on behalf of a person."""

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
    actor: ActorLike
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
    actor: ActorLike
    product_id: str
    name: str
    uom: str
    active: bool
    version: int


@dataclass(frozen=True)
class PlacedOrder:
    """The order POST /orders created: new, or the one its Idempotency-Key first created."""

    order: Order
    replayed: bool = False


# ---------------------------------------------------------------------------- use cases


async def submit_order(cmd: SubmitOrder, uow: OrderUnitOfWork) -> str:
    """Receive (and confirm), reject, or ignore as a repeat one submission; returns which."""
    async with uow.begin(actor=cmd.actor, correlation_id=cmd.correlation_id,
                         causation_id=cmd.event_id, inbox=(cmd.consumer, str(cmd.event_id)),
                         reply_to=cmd.reply_to) as tx:
        draft = cmd.draft
        reasons = provenance_problems(cmd.source, cmd.producer)
        facts = await tx.orders.facts_for(draft)
        if facts.existing_order_id is not None and not reasons:
            _ignore_repeat(tx, cmd, facts.existing_order_id)
            return "duplicate"
        reasons += check_order(draft, facts.customer, facts.products)
        if reasons:
            tx.collect(SubmissionRejected(source=cmd.source, external_ref=draft.external_ref,
                                          event_id=cmd.event_id, reasons=reasons))
            return "rejected"
        order = Order.receive(draft, order_id=uuid.uuid4(), correlation_id=tx.correlation_id,
                              created_by=cmd.actor.id, roles=SYSTEM_ROLES)
        if cmd.confirm:
            # The sales system confirmed it already: both steps commit together, so no one ever
            # sees this order unconfirmed, yet the audit and the events still show both.
            order.confirm(actor_id=cmd.actor.id, roles=SYSTEM_ROLES)
        if not await tx.orders.add(order):
            # Another delivery of the same reference committed between our read and our insert.
            _ignore_repeat(tx, cmd, await tx.orders.find_id(draft.source, draft.external_ref or ""))
            return "duplicate"
        return order.status.value


async def reject_submission(cmd: RejectSubmission, uow: OrderUnitOfWork) -> str:
    """Answer a contract-breaking submission with every problem it has, replicas included."""
    async with uow.begin(actor=cmd.actor, correlation_id=cmd.correlation_id,
                         causation_id=cmd.event_id, inbox=(cmd.consumer, str(cmd.event_id)),
                         reply_to=cmd.reply_to) as tx:
        reasons = provenance_problems(cmd.source, cmd.producer) + list(cmd.problems)
        if cmd.customer_ref or cmd.line_refs:
            customer, products = await tx.replicas.lookup(
                cmd.customer_ref, [line.product_id for line in cmd.line_refs]
            )
            reasons += check_references(cmd.customer_ref, cmd.line_refs, customer, products)
        tx.collect(SubmissionRejected(source=cmd.source, external_ref=cmd.external_ref,
                                      event_id=cmd.event_id, reasons=reasons))
    return "rejected"


async def place_order(cmd: PlaceOrder, uow: OrderUnitOfWork) -> PlacedOrder:
    """Create an order from the API, once per Idempotency-Key; refusals write nothing."""
    roles = person_roles(cmd.roles)
    # The creation edge does not depend on any state: refuse the caller before reading anything.
    creator = WORKFLOW.decide_creation(Status.RECEIVED, roles=roles)
    async with uow.begin(actor=Actor(id=cmd.actor_id, role=creator.acting_role)) as tx:
        if cmd.idempotency_key is not None:
            stored = await tx.idempotency.claim(cmd.actor_id, cmd.idempotency_key, cmd.request_hash)
            if stored is not None:
                if stored.request_hash != cmd.request_hash:
                    raise InvalidInput(
                        [f"Idempotency-Key {cmd.idempotency_key!r} was already used for a "
                         "different request; send a new key for a new order"]
                    )
                return PlacedOrder(stored.order, replayed=True)
        draft = cmd.draft
        facts = await tx.orders.facts_for(draft)
        if facts.existing_order_id is not None:
            raise _taken(draft, facts.existing_order_id)
        reasons = check_order(draft, facts.customer, facts.products)
        if reasons:
            raise InvalidInput(reasons, detail=f"the order cannot be accepted: {'; '.join(reasons)}",
                               reasons=reasons)
        order = Order.receive(draft, order_id=uuid.uuid4(), correlation_id=tx.correlation_id,
                              created_by=cmd.actor_id, roles=roles)
        if not await tx.orders.add(order):
            raise _taken(draft, await tx.orders.find_id(None, draft.external_ref or ""))
        if cmd.idempotency_key is not None:
            await tx.idempotency.complete(cmd.actor_id, cmd.idempotency_key, order)
    return PlacedOrder(order)


async def confirm_order(cmd: ConfirmOrder, uow: OrderUnitOfWork) -> Order:
    """received → confirmed; publishes the snapshot the dispatch service works from."""
    async with uow.begin(actor=_person(cmd.actor_id, cmd.roles)) as tx:
        order = await _load(tx, cmd.order_id)
        order.confirm(actor_id=cmd.actor_id, roles=person_roles(cmd.roles),
                      expected_version=cmd.expected_version)
        await tx.orders.save(order)
    return order


async def cancel_order(cmd: CancelOrder, uow: OrderUnitOfWork) -> Order:
    """received or confirmed → cancelled, with a reason."""
    async with uow.begin(actor=_person(cmd.actor_id, cmd.roles)) as tx:
        order = await _load(tx, cmd.order_id)
        order.cancel(actor_id=cmd.actor_id, roles=person_roles(cmd.roles), reason=cmd.reason,
                     expected_version=cmd.expected_version)
        await tx.orders.save(order)
    return order


async def replicate_customer(cmd: ReplicateCustomer, uow: OrderUnitOfWork) -> ReplicaOutcome | None:
    """'inserted' or 'updated', or None when the replica already holds this version or newer."""
    async with uow.begin(actor=cmd.actor, correlation_id=cmd.correlation_id,
                         causation_id=cmd.event_id, inbox=(cmd.consumer, str(cmd.event_id))) as tx:
        # Newest-wins is decided by the upsert itself, atomically; the event says what it did.
        outcome = await tx.replicas.upsert_customer(customer_id=cmd.customer_id, name=cmd.name,
                                                    active=cmd.active, version=cmd.version)
        if outcome is not None:
            tx.collect(CustomerReplicated(customer_id=cmd.customer_id, name=cmd.name,
                                          active=cmd.active, version=cmd.version, outcome=outcome))
    return outcome


async def replicate_product(cmd: ReplicateProduct, uow: OrderUnitOfWork) -> ReplicaOutcome | None:
    """'inserted' or 'updated', or None when the replica already holds this version or newer."""
    async with uow.begin(actor=cmd.actor, correlation_id=cmd.correlation_id,
                         causation_id=cmd.event_id, inbox=(cmd.consumer, str(cmd.event_id))) as tx:
        outcome = await tx.replicas.upsert_product(product_id=cmd.product_id, name=cmd.name,
                                                   uom=cmd.uom, active=cmd.active,
                                                   version=cmd.version)
        if outcome is not None:
            tx.collect(ProductReplicated(product_id=cmd.product_id, name=cmd.name, uom=cmd.uom,
                                         active=cmd.active, version=cmd.version, outcome=outcome))
    return outcome


Handler = Callable[[Any, OrderUnitOfWork], Awaitable[Any]]

# Command type → handler: the edges build a command and hand it here.
HANDLERS: dict[type[Any], Handler] = {
    SubmitOrder: submit_order,
    RejectSubmission: reject_submission,
    PlaceOrder: place_order,
    ConfirmOrder: confirm_order,
    CancelOrder: cancel_order,
    ReplicateCustomer: replicate_customer,
    ReplicateProduct: replicate_product,
}


async def handle(cmd: Any, uow: OrderUnitOfWork) -> Any:
    """Run the handler of `cmd`'s type."""
    return await HANDLERS[type(cmd)](cmd, uow)


# ---------------------------------------------------------------------------- helpers


def _person(actor_id: str, roles: frozenset[str]) -> Actor:
    # Only the unit of work's default: the order's events name the role the table allowed.
    return Actor(id=actor_id, role=min(person_roles(roles), default="none"))


async def _load(tx: OrderTransaction, order_id: uuid.UUID) -> Order:
    order = await tx.orders.get(order_id)
    if order is None:
        raise NotFound(f"no order {order_id}")
    tx.correlation_id = order.correlation_id  # one correlation id per order journey
    return order


def _taken(draft: OrderDraft, order_id: uuid.UUID | None) -> Conflict:
    return Conflict(f"external_ref {draft.external_ref!r} already names order {order_id}",
                    order_id=str(order_id))


def _ignore_repeat(tx: OrderTransaction, cmd: SubmitOrder, order_id: uuid.UUID | None) -> None:
    tx.collect(SubmissionIgnored(order_id=order_id, source=cmd.source,
                                 external_ref=cmd.draft.external_ref, event_id=cmd.event_id))
