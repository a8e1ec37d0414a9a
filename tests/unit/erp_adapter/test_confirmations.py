"""Confirmations, their statuses, the back-off and the files, without I/O (but tmp folders)."""

from __future__ import annotations

import csv
import io
import json
import random
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.erp_adapter.confirmations import (
    Backoff,
    Confirmation,
    ConfirmationFailed,
    ConfirmationPosted,
    Kind,
    Mode,
    Shipment,
    Status,
    document,
    file_stem,
)
from services.erp_adapter.connectors import available
from services.erp_adapter.connectors.file import CSV_COLUMNS, FileConnector, render, write_atomically
from shared.domain import Actor
from shared.workflow import Conflict

PERSON = Actor("u-int", "integration")


def shipment() -> Shipment:
    return Shipment.shipped(dispatch_id="d-1", order_id="o-1", version=5,
                            evidence={"carrier": "DHL", "tracking_number": "T-1"},
                            lines=[{"line_no": 1, "quantity": "4"}, {"line_no": 2, "quantity": "2"}],
                            backorder=[{"line_no": 1, "quantity": "1"}])


def confirmation(mode: Mode = Mode.AUTO) -> Confirmation:
    key = uuid.uuid4()
    return Confirmation.record_new(event_id=key, kind=Kind.SHIPPED, shipment=shipment(),
                                   connector="file", mode=mode,
                                   document=document(Kind.SHIPPED, key, shipment(),
                                                     occurred_at="2026-12-07T10:00:00Z"),
                                   correlation_id=uuid.uuid4())


def test_a_shipment_carries_shipped_and_owed_quantities_per_line() -> None:
    assert [(x.line_no, x.shipped_quantity, x.backorder_quantity) for x in shipment().lines] == [
        (1, "4", "1"), (2, "2", "0")]


def test_a_corrected_quantity_moves_the_backorder_and_never_owes_less_than_nothing() -> None:
    fixed = shipment().corrected(7, [
        {"field": "shipped_quantity", "line_no": 1, "to": "4.5"},
        {"field": "shipped_quantity", "line_no": 2, "to": "3"},
        {"field": "carrier", "to": "UPS"}])
    assert fixed.version == 7 and fixed.carrier == "UPS" and fixed.tracking_number == "T-1"
    assert [(x.shipped_quantity, x.backorder_quantity) for x in fixed.lines] == [
        ("4.5", "0.5"), ("3", "0")]


@pytest.mark.parametrize(("mode", "status"), [(Mode.SHADOW, Status.SHADOWED),
                                              (Mode.APPROVE, Status.AWAITING_APPROVAL),
                                              (Mode.AUTO, Status.PENDING)])
def test_the_first_status_follows_the_connectors_mode(mode: Mode, status: Status) -> None:
    assert confirmation(mode).status is status


def test_only_a_confirmation_awaiting_approval_can_be_approved() -> None:
    waiting = confirmation(Mode.APPROVE)
    waiting.approve(PERSON)
    assert (waiting.status, waiting.approved_by) == (Status.PENDING, "u-int")
    with pytest.raises(Conflict, match="only one awaiting_approval"):
        waiting.approve(PERSON)


def test_a_failed_attempt_is_retried_until_the_limit_then_fails_with_its_event() -> None:
    found, backoff = confirmation(), Backoff(base_s=1, cap_s=4, limit=3)
    found.pull_events()
    delays = []
    for attempt in (1, 2):
        found.attempts = attempt
        delays.append(found.attempt_failed("HTTP 503", permanent=False, backoff=backoff))
    assert found.status is Status.PENDING and all(d is not None for d in delays)
    found.attempts = 3
    assert found.attempt_failed("HTTP 503", permanent=False, backoff=backoff) is None
    assert found.status is Status.FAILED and found.last_error == "HTTP 503"
    assert [type(e) for e in found.pull_events()] == [ConfirmationFailed]
    found.retry(PERSON)
    assert (found.status, found.attempts, found.last_error) == (Status.PENDING, 0, None)


def test_a_refusal_fails_at_once() -> None:
    found = confirmation()
    found.attempts = 1
    assert found.attempt_failed("HTTP 422", permanent=True, backoff=Backoff()) is None
    assert found.status is Status.FAILED


def test_a_sent_confirmation_is_acknowledged_by_an_http_answer_or_posted_until_its_file_ack() -> None:
    http, file = confirmation(), confirmation()
    http.sent({"status": 201}, acknowledged=True)
    file.sent({"file": "x.json"}, acknowledged=False)
    assert (http.status, file.status) == (Status.ACKNOWLEDGED, Status.POSTED)
    assert ConfirmationPosted in [type(e) for e in file.pull_events()]
    file.acknowledge({"erp_document": "DN-1"})
    assert file.status is Status.ACKNOWLEDGED and file.response == {"erp_document": "DN-1"}


def test_the_backoff_doubles_is_capped_and_jittered_by_a_quarter() -> None:
    backoff, rand = Backoff(base_s=2, cap_s=10, limit=8), random.Random(7)
    for attempts, ceiling in ((1, 2), (2, 4), (3, 8), (4, 10), (9, 10)):
        assert 0.75 * ceiling <= backoff.delay(attempts, rand) <= 1.25 * ceiling


def test_file_names_sort_in_the_order_the_confirmations_were_recorded() -> None:
    key = uuid.UUID(int=1)
    names = [file_stem(datetime(2026, 12, 7, 10, 0, s, tzinfo=UTC), seq, key)
             for s, seq in ((1, 9), (1, 10), (2, 11))]
    assert names == sorted(names)
    assert names[0] == f"20261207T100001000000Z-000000000009-{key}"


def test_a_csv_confirmation_has_one_row_per_line_with_the_idempotency_key() -> None:
    key = uuid.uuid4()
    rows = list(csv.DictReader(io.StringIO(render(
        document(Kind.SHIPPED, key, shipment(), occurred_at="t"), "csv").decode())))
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert [(r["idempotency_key"], r["line_no"], r["backorder_quantity"]) for r in rows] == [
        (str(key), "1", "1"), (str(key), "2", "0")]


def test_a_reader_polling_the_folder_never_sees_a_partial_file(tmp_path: Path) -> None:
    content = json.dumps({"x": "y" * 2_000_000}).encode()
    seen: list[bytes] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            for path in tmp_path.glob("*.json"):  # what an ERP import picks up
                seen.append(path.read_bytes())

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        for n in range(20):
            write_atomically(tmp_path, f"c-{n:03d}.json", content)
    finally:
        stop.set()
        reader.join()
    assert seen and all(s == content for s in seen)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_acknowledgement_files_are_matched_by_key_or_by_the_event_id_in_their_name(
    tmp_path: Path,
) -> None:
    first, second = uuid.uuid4(), uuid.uuid4()
    (tmp_path / "a.json").write_text(json.dumps({"idempotency_key": str(first), "ok": True}))
    (tmp_path / f"ACK-{second}.txt").write_text("accepted")
    (tmp_path / "noise.txt").write_text("nothing to match")
    found = FileConnector(tmp_path / "out", tmp_path).acknowledgements()
    assert [(a.event_id, a.path.name) for a in found] == [
        (second, f"ACK-{second}.txt"), (first, "a.json")]
    FileConnector(tmp_path / "out", tmp_path).done(found[0])
    assert (tmp_path / "processed" / f"ACK-{second}.txt").exists()


def test_the_connectors_are_the_modules_of_their_package() -> None:
    assert available() == ["file", "http"]
