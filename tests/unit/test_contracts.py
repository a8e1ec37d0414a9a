"""The v1 wire contracts: what a producer may send and what a consumer must refuse."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from shared.contracts.dispatch import DispatchTransitioned, dispatch_status_event
from shared.contracts.envelope import Actor, Envelope, LooseEnvelope, new_envelope
from shared.contracts.erp import CustomerUpserted
from shared.contracts.ext import OrderSubmitted, ProductionException, source_of
from shared.contracts.order import OrderConfirmed, OrderRejected

ACTOR = Actor(id="mes-gateway", role="integration")


def submission(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "external_ref": "SO-2026-0042",
        "customer_id": "C-100",
        "requested_ship_date": "2026-12-03",
        "priority": "rush",
        "ship_to": {
            "name": "Acme Works",
            "street": "1 Foundry Lane",
            "city": "Leeds",
            "postal_code": "LS1 1AA",
            "country": "GB",
        },
        "lines": [
            {"line_no": 1, "product_id": "P-1", "quantity": "12.5", "uom": "kg"},
            {"line_no": 2, "product_id": "P-2", "quantity": "3", "uom": "ea"},
        ],
        "confirmed": False,
    }
    data.update(changes)
    return data


def line(line_no: int = 1, quantity: str = "1") -> dict[str, Any]:
    return {"line_no": line_no, "product_id": "P-1", "quantity": quantity, "uom": "ea"}


def wire(data: dict[str, Any], **envelope: Any) -> str:
    body = new_envelope(type="ext.mes.order.submitted", producer="mes", data=data, actor=ACTOR)
    body.update(envelope)
    return json.dumps(body)


# --- the envelope ---------------------------------------------------------------------------


def test_an_envelope_survives_a_round_trip_through_json_unchanged() -> None:
    correlation_id, causation_id = uuid.uuid4(), uuid.uuid4()
    sent = new_envelope(
        type="ext.mes.order.submitted",
        producer="mes",
        data=submission(),
        actor=ACTOR,
        correlation_id=correlation_id,
        causation_id=causation_id,
    )

    received = Envelope[OrderSubmitted].model_validate_json(json.dumps(sent))

    assert received.event_id == uuid.UUID(sent["event_id"])
    assert received.correlation_id == correlation_id
    assert received.causation_id == causation_id
    assert received.actor == ACTOR
    assert received.occurred_at.tzinfo is not None
    assert received.data.lines[0].quantity == Decimal("12.5")
    assert received.data.requested_ship_date == date(2026, 12, 3)
    assert json.loads(received.model_dump_json()) == sent


def test_new_envelope_stamps_a_fresh_event_id_and_a_utc_time_of_the_contract_version() -> None:
    first = new_envelope(type="order.received", producer="order", data={}, actor=ACTOR)
    second = new_envelope(type="order.received", producer="order", data={}, actor=ACTOR)

    assert first["event_id"] != second["event_id"]
    assert first["correlation_id"] != second["correlation_id"], "a new journey by default"
    assert first["version"] == 1 and first["causation_id"] is None
    assert first["occurred_at"].endswith("Z")
    occurred = datetime.fromisoformat(first["occurred_at"].replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - occurred).total_seconds()) < 5


def test_an_envelope_is_frozen() -> None:
    envelope = Envelope[OrderSubmitted].model_validate_json(wire(submission()))

    with pytest.raises(ValidationError, match="frozen"):
        envelope.type = "order.confirmed"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        envelope.data.external_ref = "SO-other"  # type: ignore[misc]


def test_fields_a_newer_producer_adds_are_ignored_not_refused() -> None:
    data = submission(sales_channel="web")
    data["ship_to"] = {**data["ship_to"], "dock": "B4"}

    envelope = Envelope[OrderSubmitted].model_validate_json(wire(data, schema_hint="v1.1"))

    assert envelope.data.external_ref == "SO-2026-0042"
    assert "schema_hint" not in envelope.model_dump()
    assert "sales_channel" not in envelope.data.model_dump()
    assert "dock" not in envelope.data.ship_to.model_dump()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("event_id", "not-a-uuid"),
        ("correlation_id", None),
        ("type", ""),
        ("producer", ""),
        ("occurred_at", "yesterday"),
        ("actor", {"id": "", "role": "planner"}),
    ],
)
def test_an_envelope_with_a_broken_header_field_is_refused(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        LooseEnvelope.model_validate_json(wire({}, **{field: value}))
    assert info.value.errors()[0]["loc"][0] == field


def test_a_loose_envelope_accepts_any_data_so_it_can_be_answered_later() -> None:
    envelope = LooseEnvelope.model_validate_json(wire({"lines": "garbage"}))

    assert envelope.data == {"lines": "garbage"}
    with pytest.raises(ValidationError):
        OrderSubmitted.model_validate(envelope.data)


# --- ext.<system>.order.submitted -----------------------------------------------------------


def test_a_complete_submission_is_accepted_with_exact_decimal_quantities() -> None:
    order = OrderSubmitted.model_validate(submission())

    assert [line.quantity for line in order.lines] == [Decimal("12.5"), Decimal("3")]
    assert order.priority == "rush" and order.confirmed is False


@pytest.mark.parametrize("quantity", ["0", "-1", "-0.001"])
def test_a_submission_with_a_quantity_that_is_not_positive_is_refused(quantity: str) -> None:
    with pytest.raises(ValidationError) as info:
        OrderSubmitted.model_validate(submission(lines=[line(1, quantity)]))
    assert info.value.errors()[0]["loc"] == ("lines", 0, "quantity")


@pytest.mark.parametrize("quantity", ["1.0001", "abc", "1e400"])
def test_a_submission_with_a_quantity_that_is_not_a_plain_decimal_is_refused(
    quantity: str,
) -> None:
    with pytest.raises(ValidationError):
        OrderSubmitted.model_validate(submission(lines=[line(1, quantity)]))


@pytest.mark.parametrize("country", ["gb", "GBR", "G", "G1", ""])
def test_a_submission_whose_country_is_not_an_iso_alpha_2_code_is_refused(country: str) -> None:
    data = submission()
    data["ship_to"] = {**data["ship_to"], "country": country}

    with pytest.raises(ValidationError) as info:
        OrderSubmitted.model_validate(data)
    assert info.value.errors()[0]["loc"] == ("ship_to", "country")


def test_a_submission_without_lines_is_refused() -> None:
    with pytest.raises(ValidationError) as info:
        OrderSubmitted.model_validate(submission(lines=[]))
    assert info.value.errors()[0]["loc"] == ("lines",)


def test_a_submission_with_a_repeated_line_number_is_refused() -> None:
    with pytest.raises(ValidationError, match="line_no must be unique"):
        OrderSubmitted.model_validate(submission(lines=[line(1), line(2), line(1)]))


@pytest.mark.parametrize(
    "changes",
    [
        {"priority": "urgent"},
        {"requested_ship_date": "next week"},
        {"external_ref": ""},
        {"lines": [line(0)]},
    ],
    ids=["priority", "ship-date", "external-ref", "line-no"],
)
def test_a_submission_with_another_broken_field_is_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        OrderSubmitted.model_validate(submission(**changes))


# --- ext.<system>.production.exception ------------------------------------------------------


@pytest.mark.parametrize(
    "reference",
    [{"order_external_ref": "SO-2026-0042"}, {"order_id": "ord-1"}],
    ids=["by-external-ref", "by-order-id"],
)
def test_a_production_exception_naming_an_order_is_accepted(reference: dict[str, str]) -> None:
    report = ProductionException.model_validate(
        {"reason_code": "MACHINE_DOWN", "blocking": True, **reference}
    )
    assert report.blocking is True


@pytest.mark.parametrize("reference", [{}, {"order_external_ref": "", "order_id": None}])
def test_a_production_exception_without_an_order_reference_is_refused(
    reference: dict[str, Any],
) -> None:
    with pytest.raises(ValidationError, match="order_external_ref"):
        ProductionException.model_validate({"reason_code": "MACHINE_DOWN", **reference})


# --- routing keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("routing_key", "system"),
    [
        ("ext.mes.order.submitted", "mes"),
        ("ext.sap-sd.production.exception", "sap-sd"),
        ("ext.line_7.order.submitted", "line_7"),
        ("ext.mes", None),
        ("ext..order.submitted", None),
        ("ext.MES.order.submitted", None),
        ("ext.-mes.order.submitted", None),
        ("ext.m" + "x" * 40 + ".order.submitted", None),
        ("order.confirmed", None),
        ("external.mes.order.submitted", None),
        ("", None),
    ],
)
def test_source_of_names_the_outside_system_of_an_ext_routing_key(
    routing_key: str, system: str | None
) -> None:
    assert source_of(routing_key) == system


# --- owned events ---------------------------------------------------------------------------


def test_a_dispatch_transition_is_routed_by_its_new_status_and_carries_a_positive_version() -> None:
    assert dispatch_status_event("released") == "dispatch.released"
    event = DispatchTransitioned(
        dispatch_id="d-1", order_id="o-1", version=2, status="released", from_status="pending"
    )
    assert event.evidence == {}
    with pytest.raises(ValidationError):
        DispatchTransitioned(
            dispatch_id="d-1", order_id="o-1", version=0, status="released", from_status="pending"
        )


def test_an_order_confirmed_event_carries_the_snapshot_dispatch_works_from() -> None:
    order = OrderSubmitted.model_validate(submission())
    confirmed = OrderConfirmed.model_validate(
        {
            "order_id": "o-1",
            "version": 2,
            "external_ref": order.external_ref,
            "source": "mes",
            "customer_id": order.customer_id,
            "requested_ship_date": order.requested_ship_date,
            "priority": order.priority,
            "ship_to": order.ship_to.model_dump(),
            "lines": [line.model_dump() for line in order.lines],
        }
    )
    again = OrderConfirmed.model_validate_json(confirmed.model_dump_json())
    assert again == confirmed
    assert again.lines[0].quantity == Decimal("12.5")


def test_a_rejection_must_give_a_person_at_least_one_reason() -> None:
    with pytest.raises(ValidationError):
        OrderRejected(external_ref="SO-1", source="mes", reasons=[])
    assert OrderRejected(reasons=["customer C-9 is unknown"]).order_id is None


def test_reference_data_defaults_to_an_active_first_version() -> None:
    customer = CustomerUpserted(customer_id="C-1", name="Acme")
    assert (customer.active, customer.version) == (True, 1)
    with pytest.raises(ValidationError):
        CustomerUpserted(customer_id="", name="Acme")
