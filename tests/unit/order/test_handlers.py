"""The order use cases against a fake unit of work: what each commits, and what it refuses."""

from __future__ import annotations

import uuid
from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from services.order.domain import LineRef, OrderDraft, OrderLine, Status
from services.order.handlers import (
    HANDLERS,
    CancelOrder,
    ConfirmOrder,
    PlacedOrder,
    PlaceOrder,
    RejectSubmission,
    ReplicateCustomer,
    ReplicateProduct,
    SubmitOrder,
    handle,
)
from shared.domain import Actor
from shared.uow import Duplicate
from shared.workflow import Conflict, Forbidden, InvalidInput, NotAllowedFromState, NotFound, StaleVersion
from tests.unit.fakes import FakeUnitOfWork
from tests.unit.order.fakes import Replica, Stores, fake_unit_of_work

JOURNEY = uuid.uuid4()
SENDER = Actor(id="u-1042", role="sales")
SHIP_TO = {"name": "Nordwerk GmbH", "street": "Hafenstr. 1", "city": "Bremen",
           "postal_code": "28195", "country": "DE"}
Fake = tuple[FakeUnitOfWork[Any], Stores]


@pytest.fixture
def fake() -> Fake:
    uow, stores = fake_unit_of_work()
    stores.customers.rows.update({"C-1": Replica("Customer 1", True, 1),
                                  "C-9": Replica("Customer 9", False, 1)})
    stores.products.rows.update({"P-1": Replica("Bolt", True, 1, "EA"),
                                 "P-2": Replica("Cable", True, 1, "M")})
    return uow, stores


def draft(ref: str | None = "WS-1", *, source: str | None = "webshop", customer_id: str = "C-1",
          lines: list[OrderLine] | None = None) -> OrderDraft:
    return OrderDraft(
        customer_id=customer_id, requested_ship_date=date(2026, 12, 1), priority="rush",
        ship_to=dict(SHIP_TO), external_ref=ref, source=source,
        lines=lines or [OrderLine(1, "P-1", Decimal("4"), "EA"),
                        OrderLine(2, "P-2", Decimal("12.5"), "M")],
    )


def submitted(ref: str = "WS-1", *, confirm: bool = False, producer: str = "webshop",
              event_id: uuid.UUID | None = None, **changes: Any) -> SubmitOrder:
    return SubmitOrder(event_id=event_id or uuid.uuid4(), consumer="spine.order.order-submitted",
                       correlation_id=JOURNEY, actor=SENDER, source="webshop", producer=producer,
                       draft=draft(ref, **changes), confirm=confirm)


def placed(key: str | None = None, *, request_hash: str = "h-1", sub: str = "u-7",
           roles: frozenset[str] = frozenset({"sales"}), **changes: Any) -> PlaceOrder:
    return PlaceOrder(actor_id=sub, roles=roles, draft=draft(**{"ref": None, "source": None,
                                                                  **changes}),
                      request_hash=request_hash, idempotency_key=key)


async def an_order(uow: FakeUnitOfWork[Any]) -> uuid.UUID:
    result: PlacedOrder = await handle(placed(), uow)
    return result.order.id


# ------------------------------------------------------------------ submissions from outside


async def test_a_valid_submission_becomes_a_received_order_with_its_audit_row_and_event(
    fake: Fake,
) -> None:
    uow, stores = fake
    cmd = submitted()
    assert await handle(cmd, uow) == "received"

    [order] = stores.orders.rows.values()
    assert (order.status, order.version, order.source, order.external_ref) == (
        Status.RECEIVED, 1, "webshop", "WS-1")
    assert order.correlation_id == JOURNEY and order.created_by == "u-1042"
    [(actor, fact)] = uow.audit
    assert actor == SENDER and (fact.action, fact.to_state) == ("order.received", "received")
    [(who, correlation_id, wire)] = uow.published
    assert who == SENDER and correlation_id == JOURNEY
    assert (wire.type, wire.data) == ("order.received", {
        "order_id": str(order.id), "version": 1, "external_ref": "WS-1", "source": "webshop",
        "status": "received"})
    assert uow.inbox == {(cmd.consumer, str(cmd.event_id))}


async def test_a_submission_confirmed_upstream_is_received_and_confirmed_in_one_commit(
    fake: Fake,
) -> None:
    uow, stores = fake
    assert await handle(submitted(confirm=True), uow) == "confirmed"

    [order] = stores.orders.rows.values()
    assert (order.status, order.version) == (Status.CONFIRMED, 2)
    assert uow.commits == 1
    assert [(a.role, f.action, f.from_state, f.to_state) for a, f in uow.audit] == [
        ("sales", "order.received", None, "received"),
        ("sales", "order.confirmed", "received", "confirmed")]
    assert uow.published_types() == ["order.received", "order.confirmed"]
    snapshot = uow.published[-1][2].data
    assert snapshot["version"] == 2 and snapshot["ship_to"] == SHIP_TO
    assert snapshot["requested_ship_date"] == "2026-12-01"
    assert [(x["line_no"], x["quantity"], x["uom"]) for x in snapshot["lines"]] == [
        (1, "4.000", "EA"), (2, "12.500", "M")]


async def test_the_same_message_twice_is_refused_by_the_inbox_and_changes_nothing(
    fake: Fake,
) -> None:
    uow, stores = fake
    cmd = submitted()
    await handle(cmd, uow)
    with pytest.raises(Duplicate):
        await handle(cmd, uow)
    assert len(stores.orders.rows) == 1 and uow.published_types() == ["order.received"]


async def test_a_second_message_with_the_same_reference_is_ignored_and_audited(fake: Fake) -> None:
    uow, stores = fake
    await handle(submitted(), uow)
    [first] = stores.orders.rows.values()
    resent = submitted()  # the same reference in a new message
    assert await handle(resent, uow) == "duplicate"

    assert len(stores.orders.rows) == 1 and uow.published_types() == ["order.received"]
    _, fact = uow.audit[-1]
    assert (fact.action, fact.entity_id) == ("order.submission_duplicate", str(first.id))
    assert fact.reason is not None and fact.reason.startswith("duplicate submission ignored")
    assert fact.details["event_id"] == str(resent.event_id)


async def test_an_order_the_replicas_refuse_is_rejected_with_every_reason_and_creates_nothing(
    fake: Fake,
) -> None:
    uow, stores = fake
    lines = [OrderLine(2, "P-999", Decimal(1), "EA"), OrderLine(1, "P-1", Decimal(1), "KG")]
    assert await handle(submitted(customer_id="C-9", lines=lines), uow) == "rejected"

    assert not stores.orders.rows
    [(_, _, wire)] = uow.published
    assert wire.type == "order.rejected"
    assert wire.data == {"external_ref": "WS-1", "source": "webshop", "order_id": None, "reasons": [
        "customer C-9 is inactive",
        "line 1: unit KG does not match product P-1, which is sold in EA",
        "line 2: product P-999 is unknown",
    ]}
    [(_, fact)] = uow.audit
    assert (fact.action, fact.entity_type, fact.entity_id) == (
        "order.rejected", "order_submission", "webshop:WS-1")


async def test_a_producer_submitting_under_another_systems_name_is_rejected_even_for_a_known_ref(
    fake: Fake,
) -> None:
    uow, stores = fake
    await handle(submitted(), uow)
    assert await handle(submitted(producer="crm"), uow) == "rejected"

    [reason] = uow.published[-1][2].data["reasons"]
    assert "'crm'" in reason and "'webshop'" in reason
    assert len(stores.orders.rows) == 1


async def test_a_contract_breaking_submission_is_answered_with_its_contract_and_replica_problems(
    fake: Fake,
) -> None:
    uow, stores = fake
    cmd = RejectSubmission(
        event_id=uuid.uuid4(), consumer="spine.order.order-submitted", correlation_id=JOURNEY,
        actor=SENDER, source="webshop", producer="webshop", external_ref="WS-7",
        problems=["line 1: quantity must be greater than 0"],
        customer_ref="C-9", line_refs=[LineRef(1, "P-999", "EA")],
    )
    assert await handle(cmd, uow) == "rejected"

    assert not stores.orders.rows
    [(_, correlation_id, wire)] = uow.published
    assert correlation_id == JOURNEY and wire.type == "order.rejected"
    assert wire.data["reasons"] == ["line 1: quantity must be greater than 0",
                                    "customer C-9 is inactive", "line 1: product P-999 is unknown"]
    assert uow.inbox == {(cmd.consumer, str(cmd.event_id))}


# ------------------------------------------------------------------ orders typed in


async def test_an_order_typed_in_by_sales_is_received_in_the_callers_name(fake: Fake) -> None:
    uow, stores = fake
    result: PlacedOrder = await handle(placed(), uow)

    assert not result.replayed and stores.orders.rows[result.order.id].status == Status.RECEIVED
    assert result.order.created_at is not None, "the answer shows the stored order"
    [(actor, fact)] = uow.audit
    assert (actor.id, actor.role, fact.action) == ("u-7", "sales", "order.received")
    assert uow.published_types() == ["order.received"]


async def test_one_idempotency_key_creates_one_order_and_replays_the_first_answer(
    fake: Fake,
) -> None:
    uow, stores = fake
    first: PlacedOrder = await handle(placed("k-1"), uow)
    await handle(ConfirmOrder(order_id=first.order.id, actor_id="u-7",
                              roles=frozenset({"sales"})), uow)
    again: PlacedOrder = await handle(placed("k-1"), uow)

    assert again.replayed and again.order == first.order
    assert again.order.status == Status.RECEIVED, "the replay answers what the first request got"
    assert len(stores.orders.rows) == 1
    assert uow.published_types() == ["order.received", "order.confirmed"]


async def test_an_idempotency_key_reused_for_another_request_is_refused(fake: Fake) -> None:
    uow, stores = fake
    await handle(placed("k-1"), uow)
    with pytest.raises(InvalidInput, match="already used for a different request"):
        await handle(placed("k-1", request_hash="h-2"), uow)
    assert len(stores.orders.rows) == 1


async def test_another_caller_may_use_the_same_idempotency_key(fake: Fake) -> None:
    uow, stores = fake
    one: PlacedOrder = await handle(placed("k-1", sub="u-a"), uow)
    two: PlacedOrder = await handle(placed("k-1", sub="u-b"), uow)
    assert one.order.id != two.order.id and len(stores.orders.rows) == 2


async def test_an_order_the_replicas_refuse_is_refused_with_its_reasons_and_writes_nothing(
    fake: Fake,
) -> None:
    uow, stores = fake
    with pytest.raises(InvalidInput) as refused:
        await handle(placed("k-1", customer_id="C-404"), uow)
    assert refused.value.extra["reasons"] == ["customer C-404 is unknown"]
    assert refused.value.detail == "the order cannot be accepted: customer C-404 is unknown"
    assert not stores.orders.rows and not stores.keys.rows and not uow.audit


async def test_a_reference_already_taken_is_a_conflict_naming_the_order(fake: Fake) -> None:
    uow, _ = fake
    first: PlacedOrder = await handle(placed(ref="PO-1"), uow)
    with pytest.raises(Conflict) as taken:
        await handle(placed(ref="PO-1"), uow)
    assert taken.value.extra == {"order_id": str(first.order.id)}


async def test_a_token_claiming_the_system_role_may_not_create_an_order(fake: Fake) -> None:
    uow, stores = fake
    with pytest.raises(Forbidden):
        await handle(placed(roles=frozenset({"system"})), uow)
    assert not stores.orders.rows and uow.commits == 0


# ------------------------------------------------------------------ confirm, cancel


async def test_confirming_publishes_the_snapshot_in_the_orders_journey_as_the_caller(
    fake: Fake,
) -> None:
    uow, stores = fake
    order_id = await an_order(uow)
    journey = stores.orders.rows[order_id].correlation_id
    order = await handle(ConfirmOrder(order_id=order_id, actor_id="u-boss",
                                      roles=frozenset({"supervisor", "planner"}),
                                      expected_version=1), uow)

    assert (order.status, order.version) == (Status.CONFIRMED, 2)
    assert stores.orders.rows[order_id].status == Status.CONFIRMED
    actor, fact = uow.audit[-1]
    assert (actor.id, actor.role, fact.from_state, fact.to_state) == (
        "u-boss", "supervisor", "received", "confirmed")
    who, correlation_id, wire = uow.published[-1]
    assert (who.id, who.role, correlation_id) == ("u-boss", "supervisor", journey)
    assert wire.type == "order.confirmed" and wire.data["version"] == 2
    assert wire.data["customer_id"] == "C-1" and len(wire.data["lines"]) == 2


async def test_a_refused_confirmation_writes_nothing(fake: Fake) -> None:
    uow, stores = fake
    order_id = await an_order(uow)
    with pytest.raises(StaleVersion):
        await handle(ConfirmOrder(order_id=order_id, actor_id="u-7", roles=frozenset({"sales"}),
                                  expected_version=2), uow)
    with pytest.raises(Forbidden):
        await handle(ConfirmOrder(order_id=order_id, actor_id="u-7",
                                  roles=frozenset({"warehouse", "system"})), uow)
    assert (stores.orders.rows[order_id].status, stores.orders.rows[order_id].version) == (
        Status.RECEIVED, 1)
    assert uow.published_types() == ["order.received"] and len(uow.audit) == 1


async def test_confirming_an_unknown_order_is_not_found(fake: Fake) -> None:
    uow, _ = fake
    with pytest.raises(NotFound):
        await handle(ConfirmOrder(order_id=uuid.uuid4(), actor_id="u-7",
                                  roles=frozenset({"sales"})), uow)


async def test_cancelling_needs_a_reason_and_publishes_it_once_done(fake: Fake) -> None:
    uow, stores = fake
    order_id = await an_order(uow)
    with pytest.raises(InvalidInput):
        await handle(CancelOrder(order_id=order_id, actor_id="u-7", roles=frozenset({"sales"}),
                                 reason="  "), uow)
    order = await handle(CancelOrder(order_id=order_id, actor_id="u-7",
                                     roles=frozenset({"sales"}), reason=" customer withdrew "),
                         uow)

    assert (order.status, order.version) == (Status.CANCELLED, 2)
    _, fact = uow.audit[-1]
    assert (fact.action, fact.reason) == ("order.cancelled", "customer withdrew")
    wire = uow.published[-1][2]
    assert wire.type == "order.cancelled" and wire.data["reason"] == "customer withdrew"
    with pytest.raises(NotAllowedFromState):
        await handle(CancelOrder(order_id=order_id, actor_id="u-7", roles=frozenset({"sales"}),
                                 reason="again"), uow)
    assert stores.orders.rows[order_id].version == 2


# ------------------------------------------------------------------ replicas


def customer(version: int, *, active: bool = True) -> ReplicateCustomer:
    return ReplicateCustomer(event_id=uuid.uuid4(), consumer="spine.order.customer-upserted",
                             correlation_id=JOURNEY, actor=Actor(id="erp_adapter", role="system"),
                             customer_id="C-5", name="Customer 5", active=active, version=version)


def product(version: int, uom: str = "EA") -> ReplicateProduct:
    return ReplicateProduct(event_id=uuid.uuid4(), consumer="spine.order.product-upserted",
                            correlation_id=JOURNEY, actor=Actor(id="erp_adapter", role="system"),
                            product_id="P-5", name="Nut", uom=uom, active=True, version=version)


async def test_a_customer_replica_keeps_only_the_newest_version_and_audits_each_change(
    fake: Fake,
) -> None:
    uow, stores = fake
    assert await handle(customer(2), uow) == "inserted"
    assert await handle(customer(1, active=False), uow) is None
    assert await handle(customer(3, active=False), uow) == "updated"

    assert stores.customers.rows["C-5"] == Replica("Customer 5", False, 3)
    assert [(f.action, f.to_state, f.details["version"]) for _, f in uow.audit] == [
        ("customer.inserted", "active", 2), ("customer.updated", "inactive", 3)]
    assert not uow.published, "replicas publish nothing"
    assert len(uow.inbox) == 3, "a stale update is still consumed once"


async def test_a_product_replica_keeps_only_the_newest_version(fake: Fake) -> None:
    uow, stores = fake
    assert await handle(product(2), uow) == "inserted"
    assert await handle(product(1, "KG"), uow) is None
    assert stores.products.rows["P-5"].uom == "EA"
    [(_, fact)] = uow.audit
    assert (fact.action, fact.details) == ("product.inserted",
                                           {"name": "Nut", "uom": "EA", "version": 2})


def test_every_command_has_exactly_one_handler() -> None:
    assert set(HANDLERS) == {SubmitOrder, RejectSubmission, PlaceOrder, ConfirmOrder, CancelOrder,
                             ReplicateCustomer, ReplicateProduct}
