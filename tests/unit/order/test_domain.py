"""The order domain without I/O: the status table, the aggregate's decisions, validation reasons."""

from __future__ import annotations

import uuid
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from services.order.contract_errors import readable_reasons, references_in
from services.order.domain import (
    SYSTEM_ROLES,
    WORKFLOW,
    CustomerReplica,
    LineRef,
    Order,
    OrderCancelled,
    OrderConfirmed,
    OrderDraft,
    OrderLine,
    OrderReceived,
    ProductReplica,
    Status,
    check_order,
    check_references,
    person_roles,
    person_roles_for_target,
    provenance_problems,
)
from shared.contracts.ext import OrderSubmitted
from shared.workflow import SYSTEM, Forbidden, InvalidInput, NotAllowedFromState, StaleVersion

SHIP_TO = {"name": "Plant 2", "street": "Hafenstr. 1", "city": "Bremen", "postal_code": "28195",
           "country": "DE"}


def _order(status: Status = Status.RECEIVED, version: int = 1) -> Order:
    return Order(
        id=uuid.uuid4(), status=status, version=version, customer_id="C-1",
        requested_ship_date=date(2026, 12, 1), priority="normal", ship_to=dict(SHIP_TO),
        lines=[OrderLine(1, "P-1", Decimal("2"), "EA")], correlation_id=uuid.uuid4(),
        created_by="u-1",
    )


def _received(roles: frozenset[str] = frozenset({"sales"})) -> Order:
    return Order.receive(_draft(), order_id=uuid.uuid4(), correlation_id=uuid.uuid4(),
                         created_by="u-1", roles=roles)


def _draft(*lines: OrderLine, customer_id: str = "C-1", country: str = "DE") -> OrderDraft:
    return OrderDraft(
        customer_id=customer_id, requested_ship_date=date(2026, 12, 1), priority="normal",
        ship_to={**SHIP_TO, "country": country},
        lines=list(lines) or [OrderLine(1, "P-1", Decimal("2"), "EA")],
    )


def _contract_errors(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        OrderSubmitted.model_validate(data)
    return readable_reasons(caught.value.errors(include_url=False), data)


def _submitted(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "external_ref": "SO-1", "customer_id": "C-1", "requested_ship_date": "2026-12-01",
        "priority": "normal", "ship_to": dict(SHIP_TO),
        "lines": [{"line_no": 1, "product_id": "P-1", "quantity": "2", "uom": "EA"}],
    }
    data.update(changes)
    return data


# ------------------------------------------------------------------ the transition table


def test_the_table_allows_exactly_the_documented_lifecycle() -> None:
    assert set(WORKFLOW.rules) == {
        (None, Status.RECEIVED),
        (Status.RECEIVED, Status.CONFIRMED),
        (Status.RECEIVED, Status.CANCELLED),
        (Status.CONFIRMED, Status.CANCELLED),
    }


def test_sales_and_supervisors_confirm_and_cancel_but_only_sales_create() -> None:
    assert person_roles_for_target(Status.RECEIVED) == {"sales"}
    assert person_roles_for_target(Status.CONFIRMED) == {"sales", "supervisor"}
    assert person_roles_for_target(Status.CANCELLED) == {"sales", "supervisor"}


def test_the_service_itself_creates_and_confirms_but_never_cancels() -> None:
    assert {edge for edge, rule in WORKFLOW.rules.items() if SYSTEM in rule.roles} == {
        (None, Status.RECEIVED), (Status.RECEIVED, Status.CONFIRMED)}


def test_no_token_can_act_as_the_service_itself() -> None:
    assert person_roles({"sales", SYSTEM}) == {"sales"}
    with pytest.raises(Forbidden):
        _received(roles=person_roles({SYSTEM}))


def test_a_received_order_can_be_confirmed_by_sales() -> None:
    order = _order()
    order.confirm(actor_id="u-1", roles=frozenset({"sales"}), expected_version=1)
    [event] = order.pull_events()
    assert isinstance(event, OrderConfirmed)
    assert (event.from_status, order.status, order.version) == (Status.RECEIVED, Status.CONFIRMED, 2)


def test_the_service_confirms_an_order_its_sales_system_already_confirmed() -> None:
    order = _order()
    order.confirm(actor_id="u-1042", roles=SYSTEM_ROLES)
    [event] = order.pull_events()
    # The service acts on the sender's message: the unit of work's actor (the sender) is named.
    assert event.actor is None and order.status == Status.CONFIRMED


def test_confirming_twice_is_not_allowed_from_the_confirmed_state() -> None:
    with pytest.raises(NotAllowedFromState):
        _order(Status.CONFIRMED, 2).confirm(actor_id="u-1", roles=frozenset({"supervisor"}))


def test_a_cancelled_order_cannot_be_cancelled_again() -> None:
    with pytest.raises(NotAllowedFromState):
        _order(Status.CANCELLED, 2).cancel(actor_id="u-1", roles=frozenset({"sales"}),
                                           reason="again")


def test_a_confirmed_order_can_be_cancelled_with_a_reason() -> None:
    order = _order(Status.CONFIRMED, 2)
    order.cancel(actor_id="u-boss", roles=frozenset({"supervisor"}), reason="  customer withdrew ")
    [event] = order.pull_events()
    assert isinstance(event, OrderCancelled)
    assert (event.from_status, event.version, event.reason) == (
        Status.CONFIRMED, 3, "customer withdrew")
    fact = event.audit()
    assert (fact.action, fact.from_state, fact.to_state, fact.reason) == (
        "order.cancelled", "confirmed", "cancelled", "customer withdrew")


def test_cancelling_needs_a_reason() -> None:
    with pytest.raises(InvalidInput):
        _order().cancel(actor_id="u-1", roles=frozenset({"sales"}), reason="  ")


def test_the_warehouse_may_not_confirm_an_order() -> None:
    with pytest.raises(Forbidden):
        _order().confirm(actor_id="u-1", roles=frozenset({"warehouse"}))


def test_the_system_may_not_cancel_an_order() -> None:
    with pytest.raises(Forbidden):
        _order().cancel(actor_id="order", roles=SYSTEM_ROLES, reason="no")


def test_a_change_based_on_a_stale_version_is_refused() -> None:
    with pytest.raises(StaleVersion):
        _order(version=3).confirm(actor_id="u-1", roles=frozenset({"sales"}), expected_version=2)


def test_a_refused_change_leaves_the_order_as_it_was() -> None:
    order = _order()
    with pytest.raises(Forbidden):
        order.confirm(actor_id="u-1", roles=frozenset({"warehouse"}))
    assert (order.status, order.version, order.events) == (Status.RECEIVED, 1, [])


def test_the_audit_names_a_role_the_table_allows() -> None:
    order = _order()
    order.confirm(actor_id="u-1", roles=frozenset({"planner", "supervisor"}))
    [confirmed] = order.pull_events()
    assert confirmed.actor is not None and confirmed.actor.role == "supervisor"
    [received] = _received(roles=frozenset({"sales", "ops"})).pull_events()
    assert received.actor is not None and received.actor.role == "sales"


def test_a_received_order_records_version_one_with_its_audit_row() -> None:
    order = _received()
    [event] = order.pull_events()
    assert isinstance(event, OrderReceived)
    assert (order.status, order.version, event.version) == (Status.RECEIVED, 1, 1)
    fact = event.audit()
    assert (fact.action, fact.entity_id, fact.from_state, fact.to_state) == (
        "order.received", str(order.id), None, "received")
    assert fact.details == {"version": 1, "source": None, "external_ref": None,
                            "customer_id": "C-1", "lines": 1}


def test_an_order_is_created_only_as_received() -> None:
    assert [edge for edge in WORKFLOW.rules if edge[0] is None] == [(None, Status.RECEIVED)]
    with pytest.raises(NotAllowedFromState):
        WORKFLOW.decide_creation(Status.CONFIRMED, roles=SYSTEM_ROLES)


# ------------------------------------------------------------------ against the replicas


def test_a_draft_matching_active_replicas_has_no_reasons() -> None:
    products = {"P-1": ProductReplica("P-1", True, "EA")}
    assert check_order(_draft(), CustomerReplica("C-1", True), products) == []


def test_an_unknown_customer_and_unknown_product_are_named() -> None:
    reasons = check_order(
        _draft(OrderLine(1, "P-1", Decimal(1), "EA"), OrderLine(2, "P-999", Decimal(1), "EA"),
               customer_id="C-9"),
        None,
        {"P-1": ProductReplica("P-1", True, "EA")},
    )
    assert reasons == ["customer C-9 is unknown", "line 2: product P-999 is unknown"]


def test_inactive_customers_and_products_are_refused() -> None:
    reasons = check_order(
        _draft(customer_id="C-9"),
        CustomerReplica("C-9", False),
        {"P-1": ProductReplica("P-1", False, "EA")},
    )
    assert reasons == ["customer C-9 is inactive", "line 1: product P-1 is inactive"]


def test_a_line_in_another_unit_than_the_product_is_refused() -> None:
    reasons = check_order(
        _draft(OrderLine(1, "P-1", Decimal(1), "KG")),
        CustomerReplica("C-1", True),
        {"P-1": ProductReplica("P-1", True, "EA")},
    )
    assert reasons == ["line 1: unit KG does not match product P-1, which is sold in EA"]


def test_a_country_code_that_iso_never_assigned_is_refused() -> None:
    reasons = check_order(
        _draft(country="ZZ"), CustomerReplica("C-1", True), {"P-1": ProductReplica("P-1", True, "EA")}
    )
    assert reasons == ["ship_to.country: 'ZZ' is not an ISO 3166 country code"]


def test_reasons_follow_line_numbers_not_the_order_lines_were_sent_in() -> None:
    reasons = check_order(
        _draft(OrderLine(3, "X-3", Decimal(1), "EA"), OrderLine(1, "X-1", Decimal(1), "EA")),
        CustomerReplica("C-1", True),
        {},
    )
    assert reasons == ["line 1: product X-1 is unknown", "line 3: product X-3 is unknown"]


def test_an_outside_system_may_submit_only_as_itself() -> None:
    assert provenance_problems("webshop", "webshop") == []
    [reason] = provenance_problems("webshop", "crm")
    assert "'crm'" in reason and "'webshop'" in reason


# ------------------------------------------------------------------ contract problems, readable


def test_a_lower_case_country_reads_as_a_sentence_about_the_country() -> None:
    reasons = _contract_errors(_submitted(ship_to={**SHIP_TO, "country": "de"}))
    assert reasons == ["ship_to.country: must be a two-letter ISO 3166 code"]


def test_a_zero_quantity_is_named_by_its_line_number() -> None:
    lines = [{"line_no": 1, "product_id": "P-1", "quantity": "1", "uom": "EA"},
             {"line_no": 7, "product_id": "P-1", "quantity": "0", "uom": "EA"}]
    assert _contract_errors(_submitted(lines=lines)) == ["line 7: quantity must be greater than 0"]


def test_a_line_without_a_usable_line_number_is_named_by_position() -> None:
    lines = [{"line_no": "one", "product_id": "P-1", "quantity": "x", "uom": "EA"}]
    assert _contract_errors(_submitted(lines=lines)) == [
        "line at position 1: line_no must be a whole number",
        'line at position 1: quantity must be a number written as a decimal string, e.g. "12.5"',
    ]


def test_missing_fields_bad_dates_and_priorities_each_get_a_sentence() -> None:
    data = _submitted(requested_ship_date="2026-13-01", priority="urgent")
    del data["customer_id"]
    assert _contract_errors(data) == [
        "customer_id: is required",
        "requested_ship_date: must be a date like 2026-12-01",
        "priority: must be normal or rush",
    ]


def test_an_order_without_lines_and_with_repeated_line_numbers_are_explained() -> None:
    assert _contract_errors(_submitted(lines=[])) == ["lines: must have at least 1 item(s)"]
    line = {"line_no": 1, "product_id": "P-1", "quantity": "1", "uom": "EA"}
    assert _contract_errors(_submitted(lines=[line, line])) == [
        "lines: line_no must be unique within an order"
    ]


def test_too_many_decimals_and_empty_texts_are_explained() -> None:
    lines = [{"line_no": 1, "product_id": "", "quantity": "1.0001", "uom": "EA"}]
    assert _contract_errors(_submitted(lines=lines, external_ref="")) == [
        "external_ref: must not be empty",
        "line 1: product_id must not be empty",
        "line 1: quantity must have at most 3 decimal places",
    ]


def test_data_that_is_not_an_object_still_gets_a_reason() -> None:
    assert _contract_errors([1, 2]) == ["the order must be an object"]  # type: ignore[arg-type]


def test_a_contract_breaking_submission_still_names_its_customer_and_products() -> None:
    data = {
        "customer_id": "C-104",
        "lines": [
            {"line_no": 1, "product_id": "P-999", "quantity": "0", "uom": "EA"},
            {"line_no": "two", "product_id": "P-205"},
            {"quantity": "1"},
        ],
    }
    customer_id, refs = references_in(data)
    assert customer_id == "C-104"
    assert refs == [LineRef(1, "P-999", "EA"), LineRef(None, "P-205", None)]
    reasons = check_references(
        customer_id, refs, CustomerReplica(id="C-104", active=False),
        {"P-205": ProductReplica(id="P-205", active=False, uom="M")},
    )
    assert reasons == [
        "customer C-104 is inactive",
        "line 1: product P-999 is unknown",
        "a line: product P-205 is inactive",
    ]


def test_references_in_ignores_what_is_not_a_name() -> None:
    assert references_in({"customer_id": 7, "lines": "none"}) == (None, [])
