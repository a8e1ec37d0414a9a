"""The order domain without I/O: the status table, decisions, and readable validation reasons."""

from __future__ import annotations

import uuid
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from services.order.domain import (
    SYSTEM,
    TRANSITIONS,
    CustomerReplica,
    Forbidden,
    LineRef,
    NotAllowedFromState,
    Order,
    OrderDraft,
    OrderLine,
    ProductReplica,
    ReasonRequired,
    StaleVersion,
    Status,
    acting_role,
    check_order,
    check_references,
    decide,
    decide_creation,
    person_roles,
    person_roles_for_target,
    provenance_problems,
    readable_reasons,
    references_in,
)
from shared.contracts.ext import OrderSubmitted

SHIP_TO = {"name": "Plant 2", "street": "Hafenstr. 1", "city": "Bremen", "postal_code": "28195",
           "country": "DE"}


def _order(status: Status = Status.RECEIVED, version: int = 1) -> Order:
    return Order(
        id=uuid.uuid4(), status=status, version=version, customer_id="C-1",
        requested_ship_date=date(2026, 12, 1), priority="normal", ship_to=dict(SHIP_TO),
        lines=[OrderLine(1, "P-1", Decimal("2"), "EA")], correlation_id=uuid.uuid4(),
        created_by="u-1",
    )


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
    assert set(TRANSITIONS) == {
        (None, Status.RECEIVED),
        (Status.RECEIVED, Status.CONFIRMED),
        (Status.RECEIVED, Status.CANCELLED),
        (Status.CONFIRMED, Status.CANCELLED),
    }


def test_sales_and_supervisors_confirm_and_cancel_but_only_sales_create() -> None:
    assert person_roles_for_target(Status.RECEIVED) == {"sales"}
    assert person_roles_for_target(Status.CONFIRMED) == {"sales", "supervisor"}
    assert person_roles_for_target(Status.CANCELLED) == {"sales", "supervisor"}


def test_no_token_can_act_as_the_service_itself() -> None:
    assert person_roles({"sales", SYSTEM}) == {"sales"}
    with pytest.raises(Forbidden):
        decide_creation(person_roles({SYSTEM}))


def test_a_received_order_can_be_confirmed_by_sales() -> None:
    rule = decide(_order(), Status.CONFIRMED, roles=frozenset({"sales"}), expected_version=1)
    assert (rule.source, rule.target) == (Status.RECEIVED, Status.CONFIRMED)


def test_the_service_confirms_an_order_its_sales_system_already_confirmed() -> None:
    decide(_order(), Status.CONFIRMED, roles=frozenset({SYSTEM}))


def test_confirming_twice_is_not_allowed_from_the_confirmed_state() -> None:
    with pytest.raises(NotAllowedFromState):
        decide(_order(Status.CONFIRMED, 2), Status.CONFIRMED, roles=frozenset({"supervisor"}))


def test_a_cancelled_order_cannot_be_cancelled_again() -> None:
    with pytest.raises(NotAllowedFromState):
        decide(_order(Status.CANCELLED, 2), Status.CANCELLED, roles=frozenset({"sales"}),
               reason="again")


def test_a_confirmed_order_can_be_cancelled_with_a_reason() -> None:
    decide(_order(Status.CONFIRMED, 2), Status.CANCELLED, roles=frozenset({"supervisor"}),
           reason="customer withdrew")


def test_cancelling_needs_a_reason() -> None:
    with pytest.raises(ReasonRequired):
        decide(_order(), Status.CANCELLED, roles=frozenset({"sales"}), reason="  ")


def test_the_warehouse_may_not_confirm_an_order() -> None:
    with pytest.raises(Forbidden):
        decide(_order(), Status.CONFIRMED, roles=frozenset({"warehouse"}))


def test_the_system_may_not_cancel_an_order() -> None:
    with pytest.raises(Forbidden):
        decide(_order(), Status.CANCELLED, roles=frozenset({SYSTEM}), reason="no")


def test_a_change_based_on_a_stale_version_is_refused() -> None:
    with pytest.raises(StaleVersion):
        decide(_order(version=3), Status.CONFIRMED, roles=frozenset({"sales"}), expected_version=2)


def test_the_audit_names_a_role_the_table_allows() -> None:
    assert acting_role(Status.CONFIRMED, {"planner", "supervisor"}) == "supervisor"
    assert acting_role(Status.RECEIVED, {"sales", "ops"}) == "sales"


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
