"""The erp_adapter's import against a fake unit of work: what it stores, publishes, audits and logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.erp_adapter.domain import Kind, UnreadableFile, UnsupportedFormat
from services.erp_adapter.handlers import (
    HANDLERS,
    ImportExport,
    ImportOutcome,
    ReceiveRecord,
    ResolveConflict,
    handle,
)
from services.erp_adapter.outbound import (
    ApproveConfirmation,
    RecordCorrection,
    RecordShipment,
    RetryConfirmation,
    SetConnectorMode,
)
from shared.contracts.envelope import Actor
from shared.workflow import InvalidInput
from tests.unit.erp_adapter.fakes import FakeErp, fake_unit_of_work

SAMPLES = Path(__file__).resolve().parents[3] / "samples" / "erp"
INTEGRATOR = Actor(id="u-9", role="integration")
CUSTOMERS = (SAMPLES / "customers.csv").read_bytes()


def export(filename: str, content: bytes, *, dry_run: bool = False) -> ImportExport:
    return ImportExport(filename=filename, content=content, actor=INTEGRATOR, dry_run=dry_run)


@pytest.fixture
def fake() -> FakeErp:
    return fake_unit_of_work()


async def test_a_new_export_stores_publishes_and_audits_every_record_in_the_runs_journey(
    fake: FakeErp,
) -> None:
    outcome: ImportOutcome = await handle(export("customers.csv", CUSTOMERS), fake.uow)

    assert outcome.report.summary() == "customers.csv: 5 rows — 5 new, 0 updated, 0 unchanged, 0 rejected"
    assert sorted(fake.master[Kind.CUSTOMERS].rows) == [f"C-10{i}" for i in range(5)]
    assert fake.uow.published_types() == ["erp.customer.upserted"] * 5
    assert {correlation for _, correlation, _ in fake.uow.published} == {outcome.run_id}
    inactive = [w.data for _, _, w in fake.uow.published if not w.data["active"]]
    assert inactive == [{"customer_id": "C-104", "name": inactive[0]["name"], "active": False,
                         "version": 1}]
    actions = [fact.action for _, fact in fake.uow.audit]
    assert actions == ["erp.customer.created"] * 5 + ["erp.import.finished"]
    assert {(who.id, who.role) for who, _ in fake.uow.audit} == {("u-9", "integration")}
    [row] = fake.runs.rows.values()
    assert row.finished and row.started_by == ("u-9", "integration")
    assert row.run.report.created == 5


async def test_the_same_export_again_changes_nothing_and_publishes_nothing(fake: FakeErp) -> None:
    await handle(export("customers.csv", CUSTOMERS), fake.uow)
    published, audited = len(fake.uow.published), len(fake.uow.audit)

    again: ImportOutcome = await handle(export("customers.csv", CUSTOMERS), fake.uow)

    assert (again.report.created, again.report.unchanged) == (0, 5)
    assert len(fake.uow.published) == published
    [(_, finished)] = fake.uow.audit[audited:]
    assert finished.action == "erp.import.finished" and finished.details["unchanged"] == 5


async def test_a_changed_record_is_published_once_with_its_next_version_and_its_change_audited(
    fake: FakeErp,
) -> None:
    products = json.loads((SAMPLES / "products.json").read_text())
    await handle(export("products.json", json.dumps(products).encode()), fake.uow)
    before = len(fake.uow.published)
    old_name = products["products"][2]["name"]
    products["products"][2]["name"] = "Stainless steel wire 2.5 mm"

    outcome: ImportOutcome = await handle(export("products.json", json.dumps(products).encode()),
                                          fake.uow)

    assert (outcome.report.updated, outcome.report.unchanged) == (1, 5)
    [(_, _, wire)] = fake.uow.published[before:]
    assert (wire.type, wire.data) == ("erp.product.upserted", {
        "product_id": "P-202", "name": "Stainless steel wire 2.5 mm", "uom": "M", "active": True,
        "version": 2})
    [fact] = [f for _, f in fake.uow.audit if f.action == "erp.product.updated"]
    assert fact.entity_id == "P-202" and fact.reason == "ERP import"
    assert fact.details == {"version": 2, "import_run_id": str(outcome.run_id),
                            "changes": {"name": [old_name, "Stainless steel wire 2.5 mm"]}}
    assert ("product", "updated", "P-202",
            f"version 2: name: {old_name!r} → 'Stainless steel wire 2.5 mm'") in fake.log_lines()


async def test_bad_rows_are_reported_and_logged_and_the_good_rows_around_them_imported(
    fake: FakeErp,
) -> None:
    csv = b"customer_id,name,active\nC-1,Acme,true\n,Nameless,true\nC-3,Carbon Ltd,maybe\n"

    outcome: ImportOutcome = await handle(export("mixed.csv", csv), fake.uow)

    assert [str(r) for r in outcome.report.rejections] == [
        "row 3: customer_id is empty", "row 4: active 'maybe' is not true/false"]
    assert list(fake.master[Kind.CUSTOMERS].rows) == ["C-1"]
    assert fake.log_lines()[-3:] == [
        ("customer", "rejected", None, "row 3: customer_id is empty"),
        ("customer", "rejected", "C-3", "row 4: active 'maybe' is not true/false"),
        ("import", "completed_with_rejections", "mixed.csv",
         "mixed.csv: 3 rows — 1 new, 0 updated, 0 unchanged, 2 rejected"),
    ]
    assert {correlation for _, correlation in fake.log.rows.values()} == {outcome.run_id}
    [row] = fake.runs.rows.values()
    assert row.finished and row.run.report.rejected == 2


async def test_a_dry_run_counts_against_the_stored_data_and_writes_nothing(fake: FakeErp) -> None:
    await handle(export("customers.csv", CUSTOMERS), fake.uow)
    stored = fake.master[Kind.CUSTOMERS].values()
    published, audited, logged = len(fake.uow.published), len(fake.uow.audit), len(fake.log.rows)

    changed = CUSTOMERS.replace(b"Alpine Tooling AG", b"Alpine Tooling SA")
    outcome: ImportOutcome = await handle(export("customers.csv", changed, dry_run=True), fake.uow)

    assert outcome.run_id is None
    assert outcome.report.summary() == (
        "customers.csv: 5 rows — 0 new, 1 updated, 4 unchanged, 0 rejected (dry run: nothing written)")
    assert fake.master[Kind.CUSTOMERS].values() == stored
    assert (len(fake.uow.published), len(fake.uow.audit), len(fake.log.rows)) == (
        published, audited, logged)
    assert len(fake.runs.rows) == 1
    assert fake.locks == [Kind.CUSTOMERS]  # the import's only: a dry run makes no one wait


@pytest.mark.parametrize(("filename", "content", "refusal", "outcome", "reason"), [
    ("empty.csv", b"", UnreadableFile, "unreadable", "empty.csv is empty"),
    ("book.xlsx", b"PK\x03\x04\x14\x00", UnsupportedFormat, "unsupported", "Excel"),
])
async def test_a_file_that_cannot_be_imported_is_refused_with_its_reason_and_logged(
    fake: FakeErp, filename: str, content: bytes, refusal: type[Exception], outcome: str,
    reason: str,
) -> None:
    with pytest.raises(refusal, match=reason) as refused:
        await handle(export(filename, content), fake.uow)

    assert isinstance(refused.value, InvalidInput) and reason in refused.value.problems[0]
    [(kind, logged_outcome, key, detail)] = fake.log_lines()
    assert (kind, logged_outcome, key) == ("import", outcome, filename) and reason in detail
    assert not fake.runs.rows and not fake.uow.published and not fake.uow.audit


async def test_a_dry_run_of_a_file_that_cannot_be_imported_logs_nothing(fake: FakeErp) -> None:
    with pytest.raises(UnreadableFile):
        await handle(export("empty.csv", b"", dry_run=True), fake.uow)
    assert not fake.log.rows and fake.uow.commits == 0


async def test_each_batch_commits_on_its_own_under_the_kinds_import_lock_and_reports_progress(
    fake: FakeErp,
) -> None:
    done: list[tuple[int, int]] = []

    await handle(export("customers.csv", CUSTOMERS), fake.uow, batch_size=2,
                 progress=lambda n, total: done.append((n, total)))

    assert done == [(2, 5), (4, 5), (5, 5)]
    assert fake.uow.commits == 1 + 3 + 1  # the run starts, three batches, the run finishes
    assert fake.locks == [Kind.CUSTOMERS] * 3


async def test_a_failed_batch_keeps_the_batches_before_it_and_leaves_the_run_unfinished(
    fake: FakeErp,
) -> None:
    fake.fail_on_save.add(2)

    with pytest.raises(ConnectionError):
        await handle(export("customers.csv", CUSTOMERS), fake.uow, batch_size=2)

    assert sorted(fake.master[Kind.CUSTOMERS].rows) == ["C-100", "C-101"]
    assert fake.uow.published_types() == ["erp.customer.upserted"] * 2
    assert [fact.action for _, fact in fake.uow.audit] == ["erp.customer.created"] * 2
    assert [line[2] for line in fake.log_lines()] == ["C-100", "C-101"]
    [row] = fake.runs.rows.values()
    assert not row.finished


def test_every_command_has_exactly_one_handler() -> None:
    assert set(HANDLERS) == {ImportExport, ReceiveRecord, ResolveConflict, RecordShipment,
                             RecordCorrection, ApproveConfirmation, RetryConfirmation,
                             SetConnectorMode}
