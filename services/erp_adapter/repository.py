"""Persistence of ERP master copies, import runs and the integration log (SQLAlchemy Core)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Sequence
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.erp_adapter.confirmations import (
    DEFAULT_MODE,
    Confirmation,
    Mode,
    Shipment,
    ShippedLine,
)
from services.erp_adapter.confirmations import Kind as ConfirmationKind
from services.erp_adapter.confirmations import Status as ConfirmationStatus
from services.erp_adapter.conflicts import (
    UNKNOWN,
    Conflict,
    ConflictStatus,
    Resolution,
    SpineValue,
    value_sha256,
)
from services.erp_adapter.domain import SCHEMAS, ImportRun, Kind, LogEntry, Stored, Upsert
from services.erp_adapter.tables import (
    MASTER_TABLES,
    confirmation,
    conflict,
    dispatch_replica,
    import_run,
    integration_log,
)
from services.erp_adapter.tables import connector as connector_table
from shared.contracts.envelope import ActorLike

Track = Callable[[ImportRun], ImportRun]


class MasterDataRepository(Protocol):
    """What handlers need of the stored master copies (the SQL one below; dicts in unit tests)."""

    async def lock(self, kind: Kind) -> None:
        """Serialise imports of `kind` until commit, so the versions a batch computes hold."""
        ...

    async def stored(self, kind: Kind, keys: Sequence[str]) -> dict[str, Stored]:
        """The stored copies of `keys` (absent keys are new records)."""
        ...

    async def save(self, kind: Kind, upserts: Sequence[Upsert],
                   import_id: uuid.UUID | None) -> None:
        """Insert new and overwrite changed copies (`import_id` None: sent over HTTP)."""
        ...


class ImportRunRepository(Protocol):
    """Import runs; every run handed in is tracked, so what it records commits with the batch."""

    async def add(self, run: ImportRun, *, started_by: ActorLike) -> None:
        """Store a run that has started (unfinished until `finish`)."""
        ...

    def resume(self, run: ImportRun) -> ImportRun:
        """Carry on with `run` in this transaction: what it records from here commits with it."""
        ...

    async def finish(self, run: ImportRun) -> None:
        """Store the run's final counts and its rejected rows; it shows as finished from now."""
        ...


class IntegrationLogRepository(Protocol):
    """The integration log: append-only lines of what crossed the ERP boundary."""

    async def add(self, entries: Sequence[LogEntry], correlation_id: uuid.UUID | None) -> None: ...


class ConflictRepository(Protocol):
    """Conflicts, one per (entity, id, field, ERP value)."""

    async def get(self, conflict_id: uuid.UUID) -> Conflict | None:
        """The conflict, locked until commit (None if there is none)."""
        ...

    async def find(self, entity: str, entity_id: str, field: str, erp_value: object
                   ) -> Conflict | None:
        """The conflict about this ERP value, locked until commit."""
        ...

    async def add(self, found: Conflict) -> bool:
        """Store a new conflict; False when the same one was stored meanwhile (then `find` it)."""
        ...

    async def update(self, found: Conflict) -> None: ...


class SpineValues(Protocol):
    """Spine's values as the adapter learned them from events (the dispatch replica)."""

    async def value_of(self, entity: str, entity_id: str, field: str) -> SpineValue: ...

    async def order_of(self, entity: str, entity_id: str) -> str | None:
        """The order a record is about, where the adapter knows it."""
        ...


# Arbitrary but fixed keys of the per-kind import locks (pg_advisory_xact_lock takes a bigint).
_IMPORT_LOCKS = {Kind.CUSTOMERS: 7_301_001, Kind.PRODUCTS: 7_301_002}


class SqlAlchemyMasterDataRepository:
    """The stored master copies of customers and products, on the unit of work's connection."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def lock(self, kind: Kind) -> None:
        # Row locks cannot cover records that do not exist yet; imports are rare and batched,
        # so one lock per kind costs nothing and keeps versions gap-free and unique.
        await self.conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_IMPORT_LOCKS[kind])))

    async def stored(self, kind: Kind, keys: Sequence[str]) -> dict[str, Stored]:
        schema, table = SCHEMAS[kind], MASTER_TABLES[kind]
        columns = [table.c[_column(kind, f)] for f in schema.columns]
        rows = await self.conn.execute(
            sa.select(*columns, table.c.content_hash, table.c.version)
            # `= ANY($1)`: one statement shape whatever the batch size (an IN list is not).
            .where(table.c.id == sa.any_(sa.bindparam("keys", list(keys), ARRAY(sa.Text))))
        )
        found: dict[str, Stored] = {}
        for row in rows.mappings():
            fields = {f: row[_column(kind, f)] for f in schema.columns}
            found[row["id"]] = Stored(fields, row["content_hash"], row["version"])
        return found

    async def save(self, kind: Kind, upserts: Sequence[Upsert],
                   import_id: uuid.UUID | None) -> None:
        # One round trip for the whole batch (executemany).
        if not upserts:
            return
        table = MASTER_TABLES[kind]
        rows = [
            {
                **{_column(kind, f): v for f, v in u.record.fields().items()},
                "content_hash": u.content_hash,
                "version": u.version,
                "last_import_id": import_id,
            }
            for u in upserts
        ]
        insert = pg_insert(table)
        overwrite = {c: insert.excluded[c] for c in rows[0] if c != "id"}
        await self.conn.execute(
            insert.on_conflict_do_update(
                index_elements=[table.c.id], set_={**overwrite, "updated_at": sa.func.now()}
            ),
            rows,
        )


def _column(kind: Kind, field: str) -> str:
    """The master tables keep the record's key in `id`."""
    return "id" if field == SCHEMAS[kind].key else field


class SqlAlchemyImportRunRepository:
    """Import runs on the unit of work's connection; tracks every run it is handed."""

    def __init__(self, conn: AsyncConnection, track: Track) -> None:
        self.conn = conn
        self.track = track

    async def add(self, run: ImportRun, *, started_by: ActorLike) -> None:
        report = run.report
        await self.conn.execute(
            sa.insert(import_run).values(
                id=run.id,
                source_filename=report.filename,
                source_format=report.format.value,
                kind=report.kind.value,
                actor=started_by.id,
                actor_role=started_by.role,
                rows_total=report.rows_total,
            )
        )
        self.track(run)

    def resume(self, run: ImportRun) -> ImportRun:
        return self.track(run)

    async def finish(self, run: ImportRun) -> None:
        report = run.report
        await self.conn.execute(
            sa.update(import_run)
            .where(import_run.c.id == run.id)
            .values(
                finished_at=sa.func.clock_timestamp(),
                created=report.created,
                updated=report.updated,
                unchanged=report.unchanged,
                rejected=report.rejected,
                errors=[r.as_dict() for r in report.rejections],
            )
        )
        self.track(run)


# A payload larger than this (as JSON) is logged by its digest only: the log stays readable and
# small, and the digest still proves what was sent (the confirmation keeps the whole payload).
LOG_PAYLOAD_MAX_BYTES = 16 * 1024


class SqlAlchemyIntegrationLogRepository:
    """Appends integration-log lines on the unit of work's connection."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def add(self, entries: Sequence[LogEntry], correlation_id: uuid.UUID | None) -> None:
        if entries:
            await self.conn.execute(sa.insert(integration_log), [_log_row(e, correlation_id)
                                                                 for e in entries])


def _log_row(e: LogEntry, correlation_id: uuid.UUID | None) -> dict[str, object]:
    payload, digest = e.payload, None
    if payload is not None:
        digest = value_sha256(payload)
        if len(json.dumps(payload, default=str)) > LOG_PAYLOAD_MAX_BYTES:
            payload = None
    return {"direction": e.direction, "kind": e.kind, "record_key": e.record_key,
            "outcome": e.outcome, "detail": e.detail, "correlation_id": correlation_id,
            "connector": e.connector, "order_id": e.order_id, "payload": payload,
            "payload_sha256": digest, "request": e.request, "response": e.response,
            "attempts": e.attempts, "last_error": e.last_error}


class SqlAlchemyConflictRepository:
    def __init__(self, conn: AsyncConnection, track: Callable[[Conflict], Conflict]) -> None:
        self.conn = conn
        self.track = track

    async def get(self, conflict_id: uuid.UUID) -> Conflict | None:
        return await self._one(conflict.c.id == conflict_id)

    async def find(self, entity: str, entity_id: str, field: str, erp_value: object
                   ) -> Conflict | None:
        return await self._one(sa.and_(
            conflict.c.entity == entity, conflict.c.entity_id == entity_id,
            conflict.c.field == field, conflict.c.erp_value_sha256 == value_sha256(erp_value)))

    async def _one(self, where: sa.ColumnElement[bool]) -> Conflict | None:
        row = (await self.conn.execute(
            sa.select(conflict).where(where).with_for_update())).mappings().first()
        if row is None:
            return None
        return self.track(Conflict(
            id=row["id"], entity=row["entity"], entity_id=row["entity_id"], field=row["field"],
            erp_value=row["erp_value"], spine_value=row["spine_value"],
            spine_value_known=row["spine_value_known"], spine_owner=row["spine_owner"],
            erp_record=row["erp_record"], connector=row["connector"], order_id=row["order_id"],
            correlation_id=row["correlation_id"], status=ConflictStatus(row["status"]),
            resolution=Resolution(row["resolution"]) if row["resolution"] else None,
            reason=row["reason"], resolved_by=row["resolved_by"],
            occurrences=row["occurrences"], version=row["version"]))

    async def add(self, found: Conflict) -> bool:
        inserted = await self.conn.execute(
            pg_insert(conflict).values(
                id=found.id, entity=found.entity, entity_id=found.entity_id, field=found.field,
                erp_value=found.erp_value, erp_value_sha256=found.erp_value_sha256,
                spine_value=found.spine_value, spine_value_known=found.spine_value_known,
                spine_owner=found.spine_owner, erp_record=found.erp_record,
                connector=found.connector, order_id=found.order_id, status=found.status.value,
                version=found.version, correlation_id=found.correlation_id,
            ).on_conflict_do_nothing().returning(conflict.c.id))
        if inserted.first() is None:
            return False
        self.track(found)
        return True

    async def update(self, found: Conflict) -> None:
        resolved = found.status is ConflictStatus.RESOLVED
        await self.conn.execute(
            sa.update(conflict).where(conflict.c.id == found.id).values(
                status=found.status.value,
                resolution=found.resolution.value if found.resolution else None,
                reason=found.reason, resolved_by=found.resolved_by,
                resolved_at=sa.func.now() if resolved else None,
                occurrences=found.occurrences, version=found.version,
                erp_record=found.erp_record, spine_value=found.spine_value,
                spine_value_known=found.spine_value_known,
                last_seen_at=sa.func.now(),
            ))


_LINE_FIELD = re.compile(r"^lines\[(\d+)\]\.(shipped_quantity|backorder_quantity)$")


class SqlAlchemySpineValues:
    """Spine's values from the dispatch replica; an order's fields are not replicated here."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def _dispatch(self, dispatch_id: str) -> sa.RowMapping | None:
        return (await self.conn.execute(sa.select(dispatch_replica).where(
            dispatch_replica.c.dispatch_id == dispatch_id))).mappings().first()

    async def value_of(self, entity: str, entity_id: str, field: str) -> SpineValue:
        if entity != "dispatch":
            return UNKNOWN
        row = await self._dispatch(entity_id)
        if row is None:
            return UNKNOWN
        if field in ("dispatch_id", "order_id", "status", "carrier", "tracking_number"):
            return SpineValue(True, row[field])
        line = _LINE_FIELD.match(field)
        if line and row["shipped_at"] is not None:
            for found in row["lines"]:
                if found["line_no"] == int(line.group(1)):
                    return SpineValue(True, found.get(line.group(2)))
            return SpineValue(True, None)  # shipped without that line
        return UNKNOWN

    async def order_of(self, entity: str, entity_id: str) -> str | None:
        if entity == "order":
            return entity_id
        if entity == "dispatch":
            row = await self._dispatch(entity_id)
            return None if row is None else str(row["order_id"])
        return None


class ShipmentRepository(Protocol):
    """The dispatch replica, fed by `dispatch.shipped|corrected`; newer versions only."""

    async def ship(self, shipment: Shipment, connector: str) -> tuple[bool, Mode]:
        """Store a shipped dispatch unless a newer version is known; and `connector`'s mode."""
        ...

    async def current(self, dispatch_id: str, connector: str) -> tuple[Shipment | None, Mode]:
        """The shipped dispatch, locked until commit (None if not shipped yet); the mode."""
        ...

    async def correct(self, shipment: Shipment) -> None: ...


class ConfirmationRepository(Protocol):
    async def add(self, found: Confirmation) -> None: ...

    async def get(self, confirmation_id: uuid.UUID) -> Confirmation | None:
        """The confirmation, locked until commit."""
        ...

    async def get_by_event(self, event_id: uuid.UUID) -> Confirmation | None:
        """The confirmation whose idempotency key is `event_id`, locked until commit."""
        ...

    async def claim_due(self, limit: int, lease_s: float) -> list[Confirmation]:
        """Due pending confirmations of connectors not in shadow mode, one more attempt each.

        Claimed rows are not due again for `lease_s`: the send happens after this commits, and
        no other worker takes them meanwhile.
        """
        ...

    async def update(self, found: Confirmation, *, next_attempt_in_s: float | None = None
                     ) -> None: ...


class ConnectorRepository(Protocol):
    async def modes(self) -> dict[str, tuple[Mode, str]]: ...

    async def ensure(self, name: str) -> None:
        """A row for `name` in the default mode, unless it has one."""
        ...

    async def set_mode(self, name: str, mode: Mode, by: str) -> Mode | None:
        """The mode it had (None: no such connector)."""
        ...


_SHIP = """
WITH stored AS (
    INSERT INTO dispatch_replica AS r (dispatch_id, order_id, status, version, carrier,
                                       tracking_number, lines, shipped_at, updated_at)
    VALUES ($1, $2, 'shipped', $3, $4, $5, $6::jsonb, now(), now())
    ON CONFLICT (dispatch_id) DO UPDATE
        SET order_id = excluded.order_id, status = excluded.status, version = excluded.version,
            carrier = excluded.carrier, tracking_number = excluded.tracking_number,
            lines = excluded.lines, shipped_at = excluded.shipped_at, updated_at = now()
        WHERE r.version < excluded.version
    RETURNING 1
)
SELECT EXISTS (SELECT FROM stored), (SELECT mode FROM connector WHERE name = $7)
"""
_CURRENT = """
SELECT r.order_id, r.version, r.carrier, r.tracking_number, r.lines::text, r.shipped_at,
       (SELECT mode FROM connector WHERE name = $2)
FROM dispatch_replica r WHERE r.dispatch_id = $1
FOR UPDATE OF r
"""


def _mode(value: str | None) -> Mode:
    return Mode(value) if value else DEFAULT_MODE


class SqlAlchemyShipmentRepository:
    """The hot path of the dispatch events: one round trip stores and reads the mode."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def ship(self, shipment: Shipment, connector: str) -> tuple[bool, Mode]:
        row = (await self.conn.exec_driver_sql(_SHIP, (
            shipment.dispatch_id, shipment.order_id, shipment.version, shipment.carrier,
            shipment.tracking_number, json.dumps([x.as_dict() for x in shipment.lines]),
            connector))).one()
        stored, mode = tuple(row)
        return bool(stored), _mode(mode)

    async def current(self, dispatch_id: str, connector: str) -> tuple[Shipment | None, Mode]:
        row = (await self.conn.exec_driver_sql(_CURRENT, (dispatch_id, connector))).first()
        if row is None:
            return None, DEFAULT_MODE
        order_id, version, carrier, tracking, lines, shipped_at, mode = tuple(row)
        if shipped_at is None:
            return None, _mode(mode)
        return Shipment(dispatch_id, order_id, version, carrier, tracking, tuple(
            ShippedLine(int(x["line_no"]), str(x["shipped_quantity"]),
                        str(x["backorder_quantity"])) for x in json.loads(lines))), _mode(mode)

    async def correct(self, shipment: Shipment) -> None:
        await self.conn.execute(sa.update(dispatch_replica).where(
            dispatch_replica.c.dispatch_id == shipment.dispatch_id).values(
            version=shipment.version, carrier=shipment.carrier,
            tracking_number=shipment.tracking_number,
            lines=[x.as_dict() for x in shipment.lines], updated_at=sa.func.now()))


def confirmation_of(row: sa.RowMapping) -> Confirmation:
    return Confirmation(
        id=row["id"], event_id=row["event_id"], kind=ConfirmationKind(row["kind"]),
        dispatch_id=row["dispatch_id"], order_id=row["order_id"],
        dispatch_version=row["dispatch_version"], connector=row["connector"],
        status=ConfirmationStatus(row["status"]), document=row["document"],
        correlation_id=row["correlation_id"], seq=row["seq"], created_at=row["created_at"],
        attempts=row["attempts"], last_error=row["last_error"], response=row["response"],
        approved_by=row["approved_by"], version=row["version"])


class SqlAlchemyConfirmationRepository:
    def __init__(self, conn: AsyncConnection, track: Callable[[Confirmation], Confirmation]
                 ) -> None:
        self.conn = conn
        self.track = track

    async def add(self, found: Confirmation) -> None:
        await self.conn.execute(sa.insert(confirmation).values(
            id=found.id, event_id=found.event_id, kind=found.kind.value,
            dispatch_id=found.dispatch_id, order_id=found.order_id,
            dispatch_version=found.dispatch_version, connector=found.connector,
            status=found.status.value, document=found.document,
            correlation_id=found.correlation_id))
        self.track(found)

    async def _one(self, where: sa.ColumnElement[bool]) -> Confirmation | None:
        row = (await self.conn.execute(
            sa.select(confirmation).where(where).with_for_update())).mappings().first()
        return None if row is None else self.track(confirmation_of(row))

    async def get(self, confirmation_id: uuid.UUID) -> Confirmation | None:
        return await self._one(confirmation.c.id == confirmation_id)

    async def get_by_event(self, event_id: uuid.UUID) -> Confirmation | None:
        return await self._one(confirmation.c.event_id == event_id)

    async def claim_due(self, limit: int, lease_s: float) -> list[Confirmation]:
        due = (sa.select(confirmation.c.id)
               .join(connector_table, connector_table.c.name == confirmation.c.connector)
               .where(confirmation.c.status == ConfirmationStatus.PENDING.value,
                      confirmation.c.next_attempt_at <= sa.func.now(),
                      connector_table.c.mode != Mode.SHADOW.value)
               .order_by(confirmation.c.seq).limit(limit)
               .with_for_update(of=confirmation, skip_locked=True).cte("due"))
        rows = await self.conn.execute(
            sa.update(confirmation).where(confirmation.c.id == due.c.id).values(
                attempts=confirmation.c.attempts + 1,
                next_attempt_at=sa.func.now() + sa.func.make_interval(0, 0, 0, 0, 0, 0, lease_s),
                updated_at=sa.func.now())
            .returning(*confirmation.c))
        found = sorted((confirmation_of(r) for r in rows.mappings()),
                       key=lambda c: c.seq or 0)
        return [self.track(c) for c in found]

    async def update(self, found: Confirmation, *, next_attempt_in_s: float | None = None
                     ) -> None:
        values: dict[str, object] = {
            "status": found.status.value, "attempts": found.attempts,
            "last_error": found.last_error, "response": found.response,
            "approved_by": found.approved_by, "version": found.version,
            "updated_at": sa.func.now()}
        if next_attempt_in_s is not None:
            values["next_attempt_at"] = sa.func.now() + sa.func.make_interval(
                0, 0, 0, 0, 0, 0, next_attempt_in_s)
        elif found.status is ConfirmationStatus.PENDING:
            values["next_attempt_at"] = sa.func.now()
        if found.status is ConfirmationStatus.POSTED:
            values["posted_at"] = sa.func.now()
        if found.status is ConfirmationStatus.ACKNOWLEDGED:
            values["acknowledged_at"] = sa.func.now()
            values["posted_at"] = sa.func.coalesce(confirmation.c.posted_at, sa.func.now())
        await self.conn.execute(sa.update(confirmation).where(confirmation.c.id == found.id)
                                .values(**values))


class SqlAlchemyConnectorRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def modes(self) -> dict[str, tuple[Mode, str]]:
        rows = await self.conn.execute(sa.select(connector_table.c.name, connector_table.c.mode,
                                                 connector_table.c.updated_by))
        return {r.name: (Mode(r.mode), r.updated_by) for r in rows}

    async def ensure(self, name: str) -> None:
        await self.conn.execute(pg_insert(connector_table).values(
            name=name, mode=DEFAULT_MODE.value, updated_by="erp_adapter")
            .on_conflict_do_nothing())

    async def set_mode(self, name: str, mode: Mode, by: str) -> Mode | None:
        before = (await self.conn.execute(
            sa.select(connector_table.c.mode).where(connector_table.c.name == name)
            .with_for_update())).scalar()
        if before is None:
            return None
        await self.conn.execute(sa.update(connector_table).where(
            connector_table.c.name == name).values(mode=mode.value, updated_by=by,
                                                   updated_at=sa.func.now()))
        return Mode(before)
