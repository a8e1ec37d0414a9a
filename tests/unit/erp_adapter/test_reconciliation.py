"""Reconciliation of shipped dispatches against the ERP's acknowledgements, without I/O."""

from __future__ import annotations

from typing import Any

from services.erp_adapter.reconciliation import Acknowledged, Difference, reconcile


def doc(tracking: str = "T-1", shipped: str = "4") -> dict[str, Any]:
    return {"order_id": "o-1", "dispatch_id": "d-1", "carrier": "DHL",
            "tracking_number": tracking,
            "lines": [{"line_no": 1, "shipped_quantity": shipped, "backorder_quantity": "0"}]}


def test_an_acknowledged_shipment_with_the_same_values_agrees_even_as_4_000_against_4() -> None:
    report = reconcile({"d-1": doc()}, {"d-1": Acknowledged("e-1", doc(shipped="4.000"), {})},
                       {"d-1": "acknowledged"}, [])
    assert (report.shipped, report.acknowledged, report.in_agreement, report.findings) == (
        1, 1, 1, [])


def test_a_shipment_never_acknowledged_is_missing_in_the_erp_with_its_status() -> None:
    [finding] = reconcile({"d-1": doc()}, {}, {"d-1": "shadowed"}, []).findings
    assert (finding.finding, finding.confirmation_status) == ("missing_in_erp", "shadowed")
    assert "the newest confirmation is shadowed" in finding.detail


def test_what_the_erp_says_it_booked_outweighs_what_it_was_sent() -> None:
    acknowledged = Acknowledged("e-1", doc(), {"status": 201, "body": {"tracking_number": "X"}})
    [finding] = reconcile({"d-1": doc()}, {"d-1": acknowledged}, {}, []).findings
    assert finding.finding == "differs"
    assert finding.differences == (Difference("tracking_number", "T-1", "X"),)


def test_an_acknowledgement_spine_cannot_place_is_missing_in_spine() -> None:
    report = reconcile({}, {"d-9": Acknowledged("e-9", doc(), None)}, {},
                       [{"idempotency_key": "e-0", "detail": "ack-0.json names nothing"}])
    assert [(f.finding, f.dispatch_id, f.idempotency_key) for f in report.findings] == [
        ("missing_in_spine", "d-9", "e-9"), ("missing_in_spine", None, "e-0")]
