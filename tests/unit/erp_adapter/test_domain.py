"""Reading, checking and change detection of ERP exports, and what an import run records
(services/erp_adapter/domain.py)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from services.erp_adapter.domain import (
    Customer,
    Format,
    ImportFinished,
    ImportReport,
    ImportRun,
    Kind,
    Product,
    RecordUpserted,
    Stored,
    UnreadableFile,
    UnsupportedFormat,
    content_hash,
    plan_changes,
    read_export,
    validate,
)
from shared import workflow

SAMPLES = Path(__file__).resolve().parents[3] / "samples" / "erp"


def messages(filename: str, content: str | bytes, kind: Kind | None = None) -> list[str]:
    raw = content.encode() if isinstance(content, str) else content
    return [str(r) for r in validate(read_export(filename, raw, kind)).rejections]


# ------------------------------------------------------------------------- the sample files


def test_the_sample_customers_are_five_valid_rows_with_one_inactive() -> None:
    export = read_export("customers.csv", (SAMPLES / "customers.csv").read_bytes())
    checked = validate(export)
    assert (export.kind, export.format) == (Kind.CUSTOMERS, Format.CSV)
    assert checked.rejections == []
    assert len(checked.records) == 5
    assert [c.key for c in checked.records if not c.active] == ["C-104"]


def test_the_sample_products_cover_each_uom_and_one_inactive_product() -> None:
    export = read_export("products.json", (SAMPLES / "products.json").read_bytes())
    checked = validate(export)
    assert (export.kind, export.format) == (Kind.PRODUCTS, Format.JSON)
    assert checked.rejections == []
    products = [r for r in checked.records if isinstance(r, Product)]
    assert len(products) == 6
    assert {p.uom for p in products} == {"EA", "KG", "M"}
    assert [p.key for p in products if not p.active] == ["P-205"]


# ------------------------------------------------------------------------- CSV


def test_csv_rows_are_numbered_as_a_spreadsheet_shows_them() -> None:
    csv = "product_id,name,uom\nP-1,Bolt,EA\nP-2,Nut,EA\n,Washer,EA\n"
    assert messages("p.csv", csv) == ["row 4: product_id is empty"]


def test_a_bad_row_is_reported_and_the_good_rows_around_it_are_kept() -> None:
    csv = (
        "customer_id,name,active\n"
        "C-1,Acme,true\n"
        "C-2,Bolt & Co,maybe\n"
        "C-3,Carbon Ltd,no\n"
    )
    checked = validate(read_export("c.csv", csv.encode()))
    assert [str(r) for r in checked.rejections] == ["row 3: active 'maybe' is not true/false"]
    assert checked.records == [Customer("C-1", "Acme", True), Customer("C-3", "Carbon Ltd", False)]


def test_every_problem_of_a_row_is_named_in_one_rejection() -> None:
    csv = "product_id,name,uom,active\nP-1,,,perhaps\n"
    [rejection] = validate(read_export("p.csv", csv.encode())).rejections
    assert rejection.row == 2 and rejection.key == "P-1"
    assert rejection.reasons == ("name is empty", "uom is empty",
                                 "active 'perhaps' is not true/false")


def test_a_repeated_id_rejects_the_later_row_and_keeps_the_first() -> None:
    csv = "customer_id,name\nC-1,First\nC-2,Other\nC-1,Second\n"
    checked = validate(read_export("c.csv", csv.encode()))
    assert [str(r) for r in checked.rejections] == [
        "row 4: customer_id 'C-1' already appears in row 2"
    ]
    assert Customer("C-1", "First") in checked.records


@pytest.mark.parametrize(
    ("word", "expected"),
    [("true", True), ("TRUE", True), ("1", True), ("yes", True), ("Yes", True),
     ("false", False), ("0", False), ("no", False), ("NO", False), ("", True)],
)
def test_active_accepts_the_words_erps_export(word: str, expected: bool) -> None:
    checked = validate(read_export("c.csv", f"customer_id,name,active\nC-1,Acme,{word}\n".encode()))
    assert checked.records == [Customer("C-1", "Acme", expected)]


def test_a_missing_active_column_means_active() -> None:
    checked = validate(read_export("c.csv", b"customer_id,name\nC-1,Acme\n"))
    assert checked.records == [Customer("C-1", "Acme", True)]


def test_headers_are_matched_loosely_and_semicolons_are_understood() -> None:
    csv = "\ufeffProduct ID;Name;UOM;Active\nP-1;Schraube, verzinkt;EA;ja?\nP-2;Mutter;EA;1\n"
    checked = validate(read_export("artikel.csv", csv.encode()))
    assert [str(r) for r in checked.rejections] == ["row 2: active 'ja?' is not true/false"]
    assert checked.records == [Product("P-2", "Mutter", "EA", True)]


def test_a_row_with_more_values_than_columns_is_rejected_but_trailing_empty_cells_are_not() -> None:
    csv = "customer_id,name\nC-1,Acme, Inc\nC-2,Bolt,,\n"
    checked = validate(read_export("c.csv", csv.encode()))
    assert [r.row for r in checked.rejections] == [2]
    assert "more value(s) than the header has columns" in str(checked.rejections[0])
    assert checked.records == [Customer("C-2", "Bolt")]


def test_blank_lines_are_skipped_without_renumbering_the_rows_after_them() -> None:
    csv = "customer_id,name\nC-1,Acme\n\n,Nameless\n"
    assert messages("c.csv", csv) == ["row 4: customer_id is empty"]


def test_values_longer_than_the_contract_allows_are_rejected() -> None:
    csv = f"product_id,name,uom\nP-1,Bolt,{'X' * 17}\n"
    assert messages("p.csv", csv) == ["row 2: uom is 17 characters long; at most 16 are allowed"]


def test_excel_utf16_text_exports_are_read() -> None:
    content = "customer_id\tname\nC-1\tÄpfel GmbH\n".encode("utf-16")
    assert validate(read_export("c.txt", content)).records == [Customer("C-1", "Äpfel GmbH")]


# ------------------------------------------------------------------------- JSON


def test_json_may_be_a_plain_list_whose_kind_comes_from_its_keys() -> None:
    content = json.dumps([{"customer_id": "C-1", "name": "Acme", "active": False}])
    export = read_export("c.json", content.encode())
    assert export.kind is Kind.CUSTOMERS
    assert validate(export).records == [Customer("C-1", "Acme", False)]


def test_json_rows_are_numbered_from_one_and_non_objects_are_rejected() -> None:
    content = json.dumps({"products": [
        {"product_id": "P-1", "name": "Bolt", "uom": "EA"},
        "P-2",
        {"product_id": "P-3", "uom": "EA", "active": "maybe"},
        {"product_id": 404, "name": "Numeric id", "uom": "EA", "active": 0},
        {"product_id": "P-5", "name": ["not", "text"], "uom": "EA"},
    ]})
    export = read_export("p.json", content.encode())
    checked = validate(export)
    assert [str(r) for r in checked.rejections] == [
        "row 2: expected an object with product_id, found str",
        "row 3: name is missing; active 'maybe' is not true/false",
        'row 5: name must be text, not ["not", "text"]',
    ]
    assert checked.records == [
        Product("P-1", "Bolt", "EA"), Product("404", "Numeric id", "EA", False)
    ]


@pytest.mark.parametrize("content", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"customers": ' * 100_000 + b"[]" + b"}" * 100_000,
    b'[{"customer_id": "C-1", "name": ' + b"[" * 40 + b"]" * 40 + b"}]",
], ids=["arrays-100k-deep", "objects-100k-deep", "a-value-40-deep"])
def test_a_deeply_nested_json_export_is_refused_with_a_reason_not_a_recursion_error(
    content: bytes,
) -> None:
    with pytest.raises(UnreadableFile, match="nested more than 32 levels deep"):
        read_export("deep.json", content)


def test_a_json_section_must_match_an_explicit_kind() -> None:
    content = json.dumps({"customers": [{"customer_id": "C-1", "name": "Acme"}]}).encode()
    with pytest.raises(UnreadableFile, match="holds customers, not products"):
        read_export("c.json", content, Kind.PRODUCTS)


# ------------------------------------------------------------------------- whole-file refusals


@pytest.mark.parametrize(
    ("filename", "content", "error", "reason"),
    [
        ("c.csv", b"", UnreadableFile, "is empty"),
        ("c.csv", b"\n  \n", UnreadableFile, "is empty"),
        ("c.csv", b"customer_id,name\n", UnreadableFile, "has no customers in it"),
        ("c.csv", b"id,title\n1,x\n", UnreadableFile, "neither a 'customer_id' nor a 'product_id'"),
        ("c.csv", b"customer_id,product_id,name\n", UnreadableFile, "say which kind"),
        ("c.csv", b"customer_id,label\nC-1,x\n", UnreadableFile, "has no column 'name'"),
        ("c.csv", b"customer_id,name\nC-1,M\xfcller\n", UnreadableFile, "not UTF-8"),
        ("c.json", b"[{\"customer_id\": 1,", UnreadableFile, "not valid JSON"),
        ("c.json", b"customer_id,name\n", UnreadableFile, "not valid JSON"),
        ("c.json", b"{\"rows\": []}", UnreadableFile, "'customers' or 'products' list"),
        ("c.json", b"[]", UnreadableFile, "has no"),
        ("c.xlsx", b"PK\x03\x04\x14\x00", UnsupportedFormat, "Excel"),
        ("c.xml", b"<customers/>", UnsupportedFormat, "'.xml' files are not supported"),
    ],
)
def test_a_file_that_cannot_be_imported_at_all_says_why(
    filename: str, content: bytes, error: type[Exception], reason: str
) -> None:
    with pytest.raises(error, match=reason):
        read_export(filename, content)


def test_a_whole_file_refusal_is_invalid_input_whose_one_problem_is_the_reason() -> None:
    with pytest.raises(UnreadableFile) as unreadable:
        read_export("c.csv", b"")
    with pytest.raises(UnsupportedFormat) as unsupported:
        read_export("c.xml", b"<customers/>")
    assert isinstance(unreadable.value, workflow.InvalidInput)
    assert not isinstance(unreadable.value, workflow.UnsupportedFormat)
    assert unreadable.value.problems == ["c.csv is empty"] == [str(unreadable.value)]
    # Not merely wrong but a format this service does not read at all.
    assert isinstance(unsupported.value, workflow.UnsupportedFormat)


def test_an_explicit_kind_that_does_not_fit_the_columns_is_refused_with_a_hint() -> None:
    with pytest.raises(UnreadableFile, match="not customers; it looks like products"):
        read_export("p.csv", b"product_id,name,uom\nP-1,Bolt,EA\n", Kind.CUSTOMERS)


# ------------------------------------------------------------------------- change detection


def test_the_content_hash_changes_with_any_field_and_only_with_fields() -> None:
    base = Product("P-1", "Bolt", "EA", True)
    assert content_hash(base) == content_hash(Product("P-1", "Bolt", "EA", True))
    for changed in (Product("P-1", "Bolt!", "EA", True), Product("P-1", "Bolt", "KG", True),
                    Product("P-1", "Bolt", "EA", False), Product("P-2", "Bolt", "EA", True)):
        assert content_hash(changed) != content_hash(base)


def test_only_new_and_changed_records_become_upserts_with_the_next_version() -> None:
    same, renamed, new = Customer("C-1", "Acme"), Customer("C-2", "Bolt AG"), Customer("C-3", "New")
    stored = {
        "C-1": Stored(same.fields(), content_hash(same), 4),
        "C-2": Stored({"customer_id": "C-2", "name": "Bolt", "active": True},
                      content_hash(Customer("C-2", "Bolt")), 1),
    }
    plan = plan_changes([same, renamed, new], stored)
    assert plan.unchanged == 1
    assert [(u.record.key, u.version, u.is_new) for u in plan.upserts] == [
        ("C-2", 2, False), ("C-3", 1, True)
    ]
    assert (plan.created, plan.updated) == (1, 1)
    assert plan.upserts[0].changes() == {"name": ["Bolt", "Bolt AG"]}


def test_the_summary_reads_as_one_line_per_file() -> None:
    report = ImportReport("customers.csv", Kind.CUSTOMERS, Format.CSV, rows_total=12)
    report.created, report.updated, report.unchanged = 3, 1, 7
    report.rejections = validate(read_export("c.csv", b"customer_id,name\n,x\n")).rejections
    assert report.summary() == (
        "customers.csv: 12 rows — 3 new, 1 updated, 7 unchanged, 1 rejected"
    )


# ------------------------------------------------------------------------- the import run


def test_an_import_run_records_each_stored_record_and_counts_it() -> None:
    renamed, new = Customer("C-2", "Bolt AG"), Customer("C-3", "New", active=False)
    stored = {"C-2": Stored({"customer_id": "C-2", "name": "Bolt", "active": True},
                            content_hash(Customer("C-2", "Bolt")), 1)}
    run = ImportRun(id=uuid.uuid4(), report=ImportReport("c.csv", Kind.CUSTOMERS, Format.CSV, 2))

    run.apply(plan_changes([renamed, new], stored))

    updated, created = run.pull_events()
    assert isinstance(updated, RecordUpserted) and isinstance(created, RecordUpserted)
    assert (updated.record, updated.version, created.record, created.version) == (
        renamed, 2, new, 1)
    assert (run.report.created, run.report.updated) == (1, 1)
    fact = updated.audit()
    assert (fact.action, fact.entity_type, fact.entity_id, fact.reason) == (
        "erp.customer.updated", "customer", "C-2", "ERP import")
    assert fact.details == {"version": 2, "import_run_id": str(run.id),
                            "changes": {"name": ["Bolt", "Bolt AG"]}}
    assert created.audit().action == "erp.customer.created"


def test_a_finished_run_records_its_final_counts_for_the_audit_log() -> None:
    report = ImportReport("p.json", Kind.PRODUCTS, Format.JSON, rows_total=3, created=2,
                          unchanged=1)
    run = ImportRun(id=uuid.uuid4(), report=report)

    run.finish()

    [finished] = run.pull_events()
    assert isinstance(finished, ImportFinished)
    fact = finished.audit()
    assert (fact.action, fact.entity_type, fact.entity_id, fact.reason) == (
        "erp.import.finished", "import_run", str(run.id), report.summary())
    assert fact.details == {"filename": "p.json", "kind": "products", "created": 2,
                            "updated": 0, "unchanged": 1, "rejected": 0}
