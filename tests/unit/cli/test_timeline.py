"""`spine timeline`'s pure pieces: merging the services' parts by time, and the two outputs."""

from __future__ import annotations

import json
from typing import Any

from spine_cli.timeline import format_json_lines, format_table, merge


def entry(at: str, action: str, **more: Any) -> dict[str, Any]:
    return {"occurred_at": at, "actor_id": "u-sam", "actor_role": "sales", "action": action,
            "entity_type": "order", "entity_id": "o-1", "from_state": None, "to_state": None,
            "reason": None, "correlation_id": None, "trace_id": None, "details": {}, **more}


def test_the_parts_are_merged_by_time_whatever_the_spelling_of_the_instant() -> None:
    merged = merge({
        "dispatch": [entry("2026-12-07T10:00:01.5Z", "dispatch.created", service="dispatch"),
                     entry("2026-12-07T10:00:03+00:00", "dispatch.exception.opened",
                           service="dispatch")],
        "order": [entry("2026-12-07T10:00:00.000001Z", "order.received", service="order"),
                  entry("2026-12-07T10:00:01.25+00:00", "order.confirmed", service="order")],
        "notification": [entry("2026-12-07T10:00:03.1Z", "notification.created",
                               service="notification")],
    })
    assert [e["action"] for e in merged] == [
        "order.received", "order.confirmed", "dispatch.created", "dispatch.exception.opened",
        "notification.created"]


def test_entries_of_one_moment_keep_each_services_own_order_and_the_services_order() -> None:
    at = "2026-12-07T10:00:00Z"
    merged = merge({"dispatch": [entry(at, "dispatch.exception.opened"), entry(at, "dispatch.on_hold")],
                    "order": [entry(at, "order.confirmed")]})
    assert [(e["service"], e["action"]) for e in merged] == [
        ("order", "order.confirmed"), ("dispatch", "dispatch.exception.opened"),
        ("dispatch", "dispatch.on_hold")]


def test_an_integration_log_row_takes_the_common_shape_without_a_made_up_actor_or_trace() -> None:
    [shaped] = merge({"erp_adapter": [{
        "id": 7, "occurred_at": "2026-12-07T10:00:00Z", "direction": "out", "kind": "confirmation",
        "record_key": "o-1", "outcome": "sent", "detail": "", "correlation_id": "c-1",
        "connector": "http", "order_id": "o-1", "payload": None, "payload_sha256": None,
        "request": None, "response": None, "attempts": 2, "last_error": None}]})
    assert shaped["service"] == "erp_adapter"
    assert (shaped["action"], shaped["entity_id"], shaped["to_state"]) == (
        "erp.out.confirmation", "o-1", "sent")
    assert shaped["actor_id"] is None and shaped["trace_id"] is None
    assert shaped["details"] == {"log_id": 7, "direction": "out", "connector": "http",
                                 "attempts": 2}


def test_the_table_shows_actor_role_states_reason_and_trace_id_one_line_per_entry() -> None:
    lines = format_table(merge({"order": [
        entry("2026-12-07T10:00:00Z", "order.received", to_state="received"),
        entry("2026-12-07T10:00:05Z", "order.cancelled", actor_id="u-boss",
              actor_role="supervisor", from_state="confirmed", to_state="cancelled",
              reason="customer\nwithdrew", trace_id="4bf92f3577b34da6a3ce929d0e0e4736"),
    ]}))
    assert len(lines) == 3
    assert lines[0].split() == ["TIME", "SERVICE", "ACTOR", "(ROLE)", "ACTION", "FROM", "→", "TO",
                                "REASON", "TRACE", "ID"]
    assert "u-sam (sales)" in lines[1] and "· → received" in lines[1] and lines[1].endswith(" -")
    assert "u-boss (supervisor)" in lines[2] and "confirmed → cancelled" in lines[2]
    assert "customer withdrew" in lines[2]
    assert lines[2].endswith("4bf92f3577b34da6a3ce929d0e0e4736")
    # The columns line up: every service name starts where the header's does.
    start = lines[0].index("SERVICE")
    assert all(line[start:].startswith("order") for line in lines[1:])


def test_json_lines_are_one_object_per_entry_in_the_merged_order() -> None:
    merged = merge({"order": [entry("2026-12-07T10:00:00Z", "order.received")],
                    "dispatch": [entry("2026-12-07T09:59:59Z", "dispatch.cancellation_parked")]})
    lines = format_json_lines(merged)
    assert [json.loads(line)["action"] for line in lines] == [
        "dispatch.cancellation_parked", "order.received"]
