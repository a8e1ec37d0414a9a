"""The CLI's pure pieces: dead-letter names and headers, event lines, URLs in errors."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.messaging import dead_letters, topology
from shared.messaging.dead_letters import DeadLetter, jsonable, replay_headers
from shared.messaging.topology import (
    DEAD_LETTERED_AT_HEADER,
    ERROR_HEADER,
    QUEUE_HEADER,
    ROUTING_KEY_HEADER,
)
from spine_cli.dlq import dlq_name
from spine_cli.orders import describe_event, parse_ship_to
from spine_cli.settings import redact


@dataclass
class FakeMessage:
    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)
    message_id: str | None = "m-1"
    content_type: str | None = "application/json"


def test_the_dead_letter_tools_read_the_headers_the_delivery_policy_writes() -> None:
    # Repeated in shared.messaging.dead_letters so the CLI need not import FastStream.
    for name in ("ERROR_HEADER", "QUEUE_HEADER", "ROUTING_KEY_HEADER", "DEAD_LETTERED_AT_HEADER"):
        assert getattr(dead_letters, name) == getattr(topology, name), name


@pytest.mark.parametrize("given", [
    "order.order-submitted", "spine.order.order-submitted", "spine.order.order-submitted.dlq",
])
def test_a_queue_may_be_named_with_or_without_namespace_and_dlq_suffix(given: str) -> None:
    assert dlq_name("spine", given) == "spine.order.order-submitted.dlq"


def test_a_dead_letter_is_described_from_spines_own_headers_first() -> None:
    message = FakeMessage(
        b'{"event_id": "e-1",\n  "data": {}}',
        headers={ERROR_HEADER: b"ContractViolation: no lines", QUEUE_HEADER: "spine.order.x",
                 ROUTING_KEY_HEADER: "ext.mes.order.submitted",
                 DEAD_LETTERED_AT_HEADER: "2026-11-27T10:00:00Z",
                 "x-death": [{"queue": "elsewhere", "reason": "rejected", "routing-keys": ["k"]}]},
    )
    letter = DeadLetter.of(message, "spine.order.x.dlq")  # type: ignore[arg-type]
    assert letter.reason == "ContractViolation: no lines"
    assert letter.original_queue == "spine.order.x"
    assert letter.routing_key == "ext.mes.order.submitted"
    assert letter.dead_lettered_at == "2026-11-27T10:00:00Z"
    assert letter.preview == '{"event_id": "e-1", "data": {}}'


def test_a_dead_letter_without_spines_headers_is_described_from_the_brokers_x_death() -> None:
    at = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    message = FakeMessage(b"x" * 300, headers={"x-death": [
        {"queue": "spine.dispatch.order-confirmed", "reason": "delivery_limit",
         "routing-keys": ["order.confirmed"], "time": at}]}, message_id=None)
    letter = DeadLetter.of(message, "spine.dispatch.order-confirmed.dlq")  # type: ignore[arg-type]
    assert (letter.message_id, letter.reason, letter.routing_key) == ("", "delivery_limit",
                                                                      "order.confirmed")
    assert letter.dead_lettered_at == at.isoformat()
    assert len(letter.preview) == 100 and letter.preview.endswith("…")


def test_a_dead_letter_in_full_is_json_with_every_header_and_the_exact_body() -> None:
    at = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    message = FakeMessage(b"\xff\x00 not utf-8", headers={
        ERROR_HEADER: b"UnicodeDecodeError: body is not JSON",
        "x-death": [{"time": at, "count": 1, "routing-keys": [b"k"]}]})
    detail = DeadLetter.of(message, "spine.order.x.dlq").detail()  # type: ignore[arg-type]
    assert json.loads(json.dumps(detail)) == detail
    assert detail["reason"] == "UnicodeDecodeError: body is not JSON"
    assert detail["headers"]["x-death"] == [{"time": at.isoformat(), "count": 1,
                                              "routing-keys": ["k"]}]
    assert detail["body_is_utf8"] is False and detail["body_base64"] == "/wAgbm90IHV0Zi04"
    assert jsonable(datetime(2026, 1, 1, 12)) == "2026-01-01T12:00:00+00:00"


def test_a_replay_drops_the_dead_lettering_history_and_keeps_the_original_routing_key() -> None:
    headers = {ERROR_HEADER: "boom", QUEUE_HEADER: "q", DEAD_LETTERED_AT_HEADER: "t",
               "x-death": [], "x-delivery-count": 5, "x-first-death-queue": "q",
               "x-last-death-reason": "rejected", ROUTING_KEY_HEADER: "order.confirmed",
               "traceparent": "00-abc-def-01"}
    assert replay_headers(headers) == {ROUTING_KEY_HEADER: "order.confirmed",
                                       "traceparent": "00-abc-def-01"}


def test_an_event_is_one_line_with_its_ids_version_status_and_reasons() -> None:
    body = json.dumps({"type": "order.rejected", "correlation_id": "0123456789",
                       "actor": {"id": "mes", "role": "integration"},
                       "data": {"external_ref": "EXT-1", "source": "mes", "version": 2,
                                "status": "rejected", "reasons": ["no lines"]}}).encode()
    line = describe_event("order.rejected", body)
    assert "\n" not in line
    assert line.split("  ", 1)[1].split() == [
        "order.rejected", "external_ref=EXT-1", "source=mes", "v2", "status=rejected",
        "reasons=['no", "lines']", "[corr", "01234567", "by", "mes/integration]"]


def test_a_message_that_is_not_an_envelope_is_shown_as_such() -> None:
    assert "(not an envelope) not json" in describe_event("ext.mes.order.submitted", b"not\njson")


def test_a_ship_to_has_five_parts_and_an_upper_case_country() -> None:
    assert parse_ship_to("Dock 4; Hauptstr. 1 ;Augsburg;86150;de") == {
        "name": "Dock 4", "street": "Hauptstr. 1", "city": "Augsburg", "postal_code": "86150",
        "country": "DE"}
    with pytest.raises(ValueError, match="5 parts, got 4"):
        parse_ship_to("a;b;c;d")


def test_a_url_in_an_error_never_shows_its_password() -> None:
    assert redact("amqp://spine:s3cret@rabbit:5672/") == "amqp://spine:***@rabbit:5672/"
    assert redact("postgresql://postgres@127.0.0.1:5432") == "postgresql://postgres@127.0.0.1:5432"
