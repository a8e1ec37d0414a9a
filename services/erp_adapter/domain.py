"""ERP reference data: reading an export file, checking each row, deciding what changed. No I/O.

The ERP is master of customers and products; Spine only imports them. An export is read whole
(CSV or JSON), every row is checked on its own so that one bad row never stops the good ones,
and a record is published again only when its content differs from the copy already stored.
An import run records a domain event for each record it stores and one when it finishes; the
unit of work turns them into audit rows and, through `publishers.py`, `erp.*` events.

Imports only the standard library and the project's stdlib-only kernel (`shared.domain`,
`shared.workflow`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import unicodedata
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import PurePath
from typing import Any

from shared import workflow
from shared.domain import Aggregate, AuditFact, DomainEvent


class Kind(StrEnum):
    CUSTOMERS = "customers"
    PRODUCTS = "products"


class Format(StrEnum):
    CSV = "csv"
    JSON = "json"


@dataclass(frozen=True)
class Schema:
    """What one kind of export holds: its key column and its text columns with their limits."""

    kind: Kind
    entity: str
    key: str
    text_fields: Mapping[str, int]  # column → longest accepted value; all are required

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.text_fields, "active")


# Limits match the wire contracts in shared/contracts/erp.py, so anything accepted here can be
# published without a surprise at the relay.
SCHEMAS: dict[Kind, Schema] = {
    Kind.CUSTOMERS: Schema(Kind.CUSTOMERS, "customer", "customer_id",
                           {"customer_id": 64, "name": 200}),
    Kind.PRODUCTS: Schema(Kind.PRODUCTS, "product", "product_id",
                          {"product_id": 64, "name": 200, "uom": 16}),
}

TRUE_WORDS = frozenset({"true", "1", "yes"})
FALSE_WORDS = frozenset({"false", "0", "no"})

# Spreadsheet and archive formats people save by mistake instead of exporting CSV.
_BINARY_SIGNATURES = {
    b"PK\x03\x04": "an Excel workbook or a zip archive",
    b"\xd0\xcf\x11\xe0": "an old Excel/Office file",
    b"%PDF": "a PDF document",
}


# ---------------------------------------------------------------------------- errors


class ExportFileError(workflow.InvalidInput):
    """The file as a whole cannot be imported; nothing of it is written."""

    def __init__(self, reason: str) -> None:
        super().__init__([reason])


class UnreadableFile(ExportFileError):
    """Empty, not UTF-8, malformed, or not recognisably a customer or product export."""


class UnsupportedFormat(ExportFileError, workflow.UnsupportedFormat):
    """Neither CSV nor JSON."""


# ---------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Customer:
    customer_id: str
    name: str
    active: bool = True

    @property
    def key(self) -> str:
        return self.customer_id

    def fields(self) -> dict[str, Any]:
        return {"customer_id": self.customer_id, "name": self.name, "active": self.active}


@dataclass(frozen=True)
class Product:
    product_id: str
    name: str
    uom: str
    active: bool = True

    @property
    def key(self) -> str:
        return self.product_id

    def fields(self) -> dict[str, Any]:
        return {"product_id": self.product_id, "name": self.name, "uom": self.uom,
                "active": self.active}


Record = Customer | Product


def content_hash(record: Record) -> str:
    """A stable fingerprint of what the ERP said about one record (not of when it said it)."""
    canonical = json.dumps(record.fields(), sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


# ---------------------------------------------------------------------------- reading a file


@dataclass(frozen=True)
class RawRow:
    """One record as the file has it, keyed by normalised column name."""

    row: int  # CSV: the row a spreadsheet shows (header = 1); JSON: position in the list, from 1
    values: Mapping[Any, Any]


@dataclass(frozen=True)
class ExportFile:
    filename: str
    format: Format
    kind: Kind
    rows: list[RawRow]


def read_export(filename: str, content: bytes, kind: Kind | None = None) -> ExportFile:
    """Parse an export into raw rows and tell its kind; raise `ExportFileError` for a bad file."""
    name = PurePath(filename).name or "upload"
    if not content.strip():
        raise UnreadableFile(f"{name} is empty")
    for signature, what in _BINARY_SIGNATURES.items():
        if content.startswith(signature):
            raise UnsupportedFormat(f"{name} looks like {what}; export the data as CSV or JSON")
    # Excel's "Unicode text" is UTF-16 with a byte-order mark; everything else must be UTF-8.
    encoding = "utf-16" if content.startswith((b"\xff\xfe", b"\xfe\xff")) else "utf-8-sig"
    try:
        text = content.decode(encoding)
    except UnicodeDecodeError as exc:
        raise UnreadableFile(
            f"{name} is not UTF-8 text (byte {exc.start} cannot be read); "
            "export it with UTF-8 encoding"
        ) from exc
    if "\x00" in text:
        raise UnsupportedFormat(f"{name} is a binary file, not CSV or JSON")

    suffix = PurePath(name).suffix.lower()
    # Content decides, not the name: no CSV starts with a bracket, and a .txt may hold JSON.
    if text.lstrip().startswith(("[", "{")):
        fmt, found_kind, rows = Format.JSON, *_read_json(name, text, kind)
    elif suffix == ".json":
        raise UnreadableFile(f"{name} is not valid JSON: it must start with '[' or '{{'")
    elif suffix in ("", ".csv", ".txt", ".tsv"):
        fmt, found_kind, rows = Format.CSV, *_read_csv(name, text, kind)
    else:
        raise UnsupportedFormat(f"{name}: '{suffix}' files are not supported; send CSV or JSON")
    if not rows:
        raise UnreadableFile(f"{name} has no {found_kind} in it")
    return ExportFile(name, fmt, found_kind, rows)


def _normalise_column(name: object) -> str:
    """`Customer ID`, `customer-id` and ` customer_id ` all name the column `customer_id`."""
    text = str(name).strip().lower()
    return "_".join(text.replace("-", " ").split())


def _kind_of(name: str, columns: Iterable[str], given: Kind | None) -> Kind:
    present = set(columns)
    matching = [kind for kind, schema in SCHEMAS.items() if schema.key in present]
    if given is not None:
        if SCHEMAS[given].key not in present:
            hint = f"; it looks like {matching[0]}" if matching else ""
            raise UnreadableFile(
                f"{name} has no '{SCHEMAS[given].key}' column, so it is not {given}{hint}"
            )
        return given
    if len(matching) == 1:
        return matching[0]
    if not matching:
        raise UnreadableFile(
            f"{name} has neither a 'customer_id' nor a 'product_id' column "
            f"(found: {', '.join(sorted(present)) or 'none'}); is it a customer or product export?"
        )
    raise UnreadableFile(
        f"{name} has both 'customer_id' and 'product_id' columns; say which kind it is"
    )


def _read_csv(name: str, text: str, given: Kind | None) -> tuple[Kind, list[RawRow]]:
    header_line = text.lstrip("\r\n").splitlines()[0]
    # European ERPs export with ';' (the decimal comma is taken); some with tabs.
    delimiter = max((",", ";", "\t"), key=header_line.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next((row for row in reader if any(cell.strip() for cell in row)), None)
        if header is None:
            raise UnreadableFile(f"{name} has no header line")
        columns = [_normalise_column(c) for c in header]
        kind = _kind_of(name, columns, given)
        missing = [c for c in SCHEMAS[kind].text_fields if c not in columns]
        if missing:
            raise UnreadableFile(
                f"{name} has no column {', '.join(repr(c) for c in missing)} "
                f"(a {SCHEMAS[kind].entity} export needs {', '.join(SCHEMAS[kind].text_fields)})"
            )
        rows: list[RawRow] = []
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue  # blank lines are layout, not records
            values: dict[Any, Any] = dict(zip(columns, cells, strict=False))
            # Trailing empty cells are spreadsheet padding; extra values are a broken row.
            extra = [cell for cell in cells[len(columns):] if cell.strip()]
            if extra:
                values[None] = extra  # reported as a row problem by `validate`
            # The line the record ends on is the row a spreadsheet shows it in.
            rows.append(RawRow(reader.line_num, values))
    except csv.Error as exc:
        raise UnreadableFile(f"{name} is not valid CSV at line {reader.line_num}: {exc}") from exc
    return kind, rows


# An export is a list (or a section) of flat records: anything deeper is not one, and a parser
# or a later json.dumps recursing through thousands of levels would exhaust the stack.
MAX_JSON_DEPTH = 32


def _read_json(name: str, text: str, given: Kind | None) -> tuple[Kind, list[RawRow]]:
    too_deep = UnreadableFile(
        f"{name} is nested more than {MAX_JSON_DEPTH} levels deep; a JSON export is a list "
        "of flat records"
    )
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UnreadableFile(
            f"{name} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from exc
    except RecursionError as exc:
        raise too_deep from exc
    if _deeper_than(document, MAX_JSON_DEPTH):
        raise too_deep
    sections = [k for k in SCHEMAS if isinstance(document, dict) and k.value in document]
    if isinstance(document, dict):
        if len(sections) != 1 or not isinstance(document[sections[0].value], list):
            raise UnreadableFile(
                f"{name}: a JSON export is a list of objects, or an object with one "
                "'customers' or 'products' list"
            )
        items: list[Any] = document[sections[0].value]
        if given is not None and given != sections[0]:
            raise UnreadableFile(f"{name} holds {sections[0].value}, not {given}")
    elif isinstance(document, list):
        items = document
    else:
        raise UnreadableFile(f"{name}: a JSON export is a list of objects, not a single value")

    rows = [
        RawRow(i, {_normalise_column(k): v for k, v in item.items()})
        if isinstance(item, dict) else RawRow(i, {_NOT_AN_OBJECT: item})
        for i, item in enumerate(items, start=1)
    ]
    if sections:
        return sections[0], rows
    if not rows:
        raise UnreadableFile(f"{name} has no {given or 'records'} in it")
    columns = {c for row in rows for c in row.values if isinstance(c, str)}
    return _kind_of(name, columns, given), rows


_NOT_AN_OBJECT = object()  # marks a JSON list element that is not an object
def _deeper_than(document: Any, limit: int) -> bool:
    """Whether lists and objects nest more than `limit` levels, found without recursing."""
    if not isinstance(document, dict | list):
        return False
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        children = value.values() if isinstance(value, dict) else value
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


# ---------------------------------------------------------------------------- checking rows


@dataclass(frozen=True)
class RowRejection:
    """Why one row was refused, in words a person can act on."""

    row: int
    reasons: tuple[str, ...]
    key: str | None = None

    def __str__(self) -> str:
        return f"row {self.row}: {'; '.join(self.reasons)}"

    def as_dict(self) -> dict[str, Any]:
        return {"row": self.row, "key": self.key, "reasons": list(self.reasons),
                "message": str(self)}


@dataclass(frozen=True)
class Validated:
    records: list[Record]
    rejections: list[RowRejection]
    # Record key → the row's other non-blank columns: checked against the ownership registry
    # (a value for a field Spine owns becomes a conflict; an unknown column is ignored).
    extras: dict[str, dict[str, Any]] = field(default_factory=dict)


def validate(export: ExportFile) -> Validated:
    """Check every row; a bad row becomes a rejection and never stops the good ones."""
    schema = SCHEMAS[export.kind]
    records: list[Record] = []
    rejections: list[RowRejection] = []
    extras: dict[str, dict[str, Any]] = {}
    first_seen: dict[str, int] = {}
    for raw in export.rows:
        record, key, problems = _check_row(schema, raw.values)
        if key is not None:
            # The first row with an id wins; any later one is the ERP repeating itself.
            if key in first_seen:
                problems.append(f"{schema.key} {key!r} already appears in row {first_seen[key]}")
            else:
                first_seen[key] = raw.row
        if problems or record is None:
            rejections.append(RowRejection(raw.row, tuple(problems), key))
        else:
            records.append(record)
            other = _other_columns(schema, raw.values)
            if other:
                extras[record.key] = other
    return Validated(records, rejections, extras)


def _other_columns(schema: Schema, values: Mapping[Any, Any]) -> dict[str, Any]:
    """The row's columns the import does not apply, where they hold a value."""
    return {k: v for k, v in values.items()
            if isinstance(k, str) and k not in schema.columns
            and v is not None and not (isinstance(v, str) and not v.strip())}


KIND_OF_ENTITY: dict[str, Kind] = {schema.entity: kind for kind, schema in SCHEMAS.items()}


def build_record(kind: Kind, key: str, fields: Mapping[str, Any]) -> tuple[Record | None, list[str]]:
    """One record from the fields of an ERP message, checked as an export row would be."""
    schema = SCHEMAS[kind]
    values = {**fields, schema.key: key}
    record, _, problems = _check_row(schema, values)
    return (None if problems else record), problems


def _check_row(
    schema: Schema, values: Mapping[Any, Any]
) -> tuple[Record | None, str | None, list[str]]:
    if _NOT_AN_OBJECT in values:
        found = type(values[_NOT_AN_OBJECT]).__name__
        return None, None, [f"expected an object with {schema.key}, found {found}"]
    problems: list[str] = []
    if None in values:
        problems.append(
            f"has {len(values[None])} more value(s) than the header has columns "
            "(an unquoted separator inside a value?)"
        )
    text: dict[str, str] = {}
    for name, limit in schema.text_fields.items():
        value = _text(values, name, limit, problems)
        if value is not None:
            text[name] = value
    active = _active(values.get("active"), problems)
    key = text.get(schema.key)
    if problems or active is None:
        return None, key, problems
    if schema.kind is Kind.CUSTOMERS:
        return Customer(text["customer_id"], text["name"], active), key, problems
    return Product(text["product_id"], text["name"], text["uom"], active), key, problems


def _text(values: Mapping[Any, Any], name: str, limit: int, problems: list[str]) -> str | None:
    if name not in values:
        problems.append(f"{name} is missing")
        return None
    value = values[name]
    if value is None:
        problems.append(f"{name} is empty")
        return None
    # ERPs often key records by number; a number is a fine id, a fraction or a list is not.
    if isinstance(value, bool) or not isinstance(value, str | int):
        problems.append(f"{name} must be text, not {json.dumps(value)}")
        return None
    result = unicodedata.normalize("NFC", str(value).strip())
    if not result:
        problems.append(f"{name} is empty")
        return None
    if len(result) > limit:
        problems.append(f"{name} is {len(result)} characters long; at most {limit} are allowed")
        return None
    if any(unicodedata.category(ch) == "Cc" for ch in result):
        problems.append(f"{name} contains control characters")
        return None
    return result


def _active(value: object, problems: list[str]) -> bool | None:
    """Absent or blank means active: an export that has no such column lists live records."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return True
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    word = str(value).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    shown = value if isinstance(value, str) else json.dumps(value)
    problems.append(f"active {shown!r} is not true/false")
    return None


# ---------------------------------------------------------------------------- what changed


@dataclass(frozen=True)
class Stored:
    """The master copy Spine holds of one record."""

    fields: Mapping[str, Any]
    content_hash: str
    version: int


@dataclass(frozen=True)
class Upsert:
    """A record to store and publish, with the version it gets."""

    record: Record
    version: int
    content_hash: str
    before: Mapping[str, Any] | None  # None: the record is new

    @property
    def is_new(self) -> bool:
        return self.before is None

    def changes(self) -> dict[str, list[Any]]:
        """Field → [old, new] for what the ERP changed (every field for a new record)."""
        before = self.before or {}
        return {k: [before.get(k), v] for k, v in self.record.fields().items()
                if before.get(k) != v}


@dataclass(frozen=True)
class ChangePlan:
    upserts: list[Upsert]
    unchanged: int

    @property
    def created(self) -> int:
        return sum(1 for u in self.upserts if u.is_new)

    @property
    def updated(self) -> int:
        return sum(1 for u in self.upserts if not u.is_new)


def plan_changes(records: Sequence[Record], stored: Mapping[str, Stored]) -> ChangePlan:
    """New and changed records become upserts (version + 1); identical ones are left alone."""
    upserts: list[Upsert] = []
    unchanged = 0
    for record in records:
        digest = content_hash(record)
        current = stored.get(record.key)
        if current is None:
            upserts.append(Upsert(record, 1, digest, None))
        elif current.content_hash == digest:
            unchanged += 1
        else:
            upserts.append(Upsert(record, current.version + 1, digest, current.fields))
    return ChangePlan(upserts, unchanged)


# ---------------------------------------------------------------------------- the report


@dataclass
class ImportReport:
    """The outcome of one export file, counted per row."""

    filename: str
    kind: Kind
    format: Format
    rows_total: int
    dry_run: bool = False
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejections: list[RowRejection] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        return len(self.rejections)

    def add(self, plan: ChangePlan) -> None:
        self.created += plan.created
        self.updated += plan.updated
        self.unchanged += plan.unchanged

    def summary(self) -> str:
        """`customers.csv: 12 rows — 3 new, 1 updated, 7 unchanged, 1 rejected`."""
        rows = f"{self.rows_total} row{'' if self.rows_total == 1 else 's'}"
        tail = " (dry run: nothing written)" if self.dry_run else ""
        return (f"{self.filename}: {rows} — {self.created} new, {self.updated} updated, "
                f"{self.unchanged} unchanged, {self.rejected} rejected{tail}")


# ---------------------------------------------------------------------------- the import run


@dataclass(frozen=True, kw_only=True)
class RecordUpserted(DomainEvent):
    """An import stored a new or changed master record (`erp.<entity>.upserted` on the wire)."""

    entity: str
    record: Record
    version: int
    created: bool
    changes: dict[str, list[Any]]
    import_run_id: uuid.UUID | None  # None: a single record sent over HTTP

    def audit(self) -> AuditFact:
        via = {"import_run_id": str(self.import_run_id)} if self.import_run_id else \
            {"received_over": "POST /erp/records"}
        return AuditFact(
            action=f"erp.{self.entity}.{'created' if self.created else 'updated'}",
            entity_type=self.entity, entity_id=self.record.key,
            reason="ERP import" if self.import_run_id else "ERP record",
            details={"version": self.version, **via, "changes": self.changes},
        )


@dataclass(frozen=True, kw_only=True)
class ImportFinished(DomainEvent):
    """The last batch of an import run is stored; the counts are final."""

    run_id: uuid.UUID
    filename: str
    kind: Kind
    summary: str
    created: int
    updated: int
    unchanged: int
    rejected: int

    def audit(self) -> AuditFact:
        return AuditFact(
            action="erp.import.finished", entity_type="import_run", entity_id=str(self.run_id),
            reason=self.summary,
            details={"filename": self.filename, "kind": self.kind.value, "created": self.created,
                     "updated": self.updated, "unchanged": self.unchanged,
                     "rejected": self.rejected},
        )


@dataclass
class ImportRun(Aggregate):
    """One export file being imported, batch by batch: its report so far, and what it did."""

    id: uuid.UUID
    report: ImportReport

    def apply(self, plan: ChangePlan) -> None:
        """Count a stored batch, and record each new or changed record it stored."""
        self.report.add(plan)
        entity = SCHEMAS[self.report.kind].entity
        for upsert in plan.upserts:
            self.record(RecordUpserted(
                entity=entity, record=upsert.record, version=upsert.version,
                created=upsert.is_new, changes=upsert.changes(), import_run_id=self.id,
            ))

    def finish(self) -> None:
        """Every batch is stored: record the run's final counts."""
        report = self.report
        self.record(ImportFinished(
            run_id=self.id, filename=report.filename, kind=report.kind, summary=report.summary(),
            created=report.created, updated=report.updated, unchanged=report.unchanged,
            rejected=report.rejected,
        ))


@dataclass
class RecordReceipt(Aggregate):
    """One master record the ERP sent on its own (`POST /erp/records`), stored if it changed."""

    id: uuid.UUID

    def apply(self, kind: Kind, plan: ChangePlan) -> None:
        for upsert in plan.upserts:
            self.record(RecordUpserted(
                entity=SCHEMAS[kind].entity, record=upsert.record, version=upsert.version,
                created=upsert.is_new, changes=upsert.changes(), import_run_id=None,
            ))


# ---------------------------------------------------------------------------- the integration log


@dataclass(frozen=True)
class LogEntry:
    """One line of the integration log: one exchange with the ERP, in either direction."""

    kind: str  # the entity (customer, product, order, dispatch, confirmation) or `import`
    outcome: str  # the exchange's status: created, conflict, posted, failed, shadowed, …
    record_key: str | None = None  # the entity's id
    detail: str = ""
    direction: str = "in"
    connector: str | None = None  # file-import, http-records; file, http
    order_id: str | None = None
    payload: Any = None  # what crossed (kept whole up to a size, else only its digest)
    request: dict[str, Any] | None = None
    response: dict[str, Any] | None = None
    attempts: int = 1
    last_error: str | None = None
