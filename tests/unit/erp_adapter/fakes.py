"""The erp_adapter's repositories and transaction, in memory."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from services.erp_adapter import publishers
from services.erp_adapter.domain import ImportRun, Kind, LogEntry, Stored, Upsert
from services.erp_adapter.unit_of_work import ErpTransaction
from shared.contracts.envelope import ActorLike
from tests.unit.fakes import FakeStore, FakeTransaction, FakeUnitOfWork


@dataclass
class RunRow:
    """What the import_run table holds of one run."""

    run: ImportRun
    started_by: tuple[str, str]
    finished: bool = False


class FakeMasterDataRepository:
    def __init__(self, stores: dict[Kind, FakeStore[str, Stored]], fail_on_save: set[int],
                 locks: list[Kind]) -> None:
        self.stores = stores
        self.fail_on_save = fail_on_save
        self.locks = locks
        self.saves = 0

    async def lock(self, kind: Kind) -> None:
        self.locks.append(kind)  # one fake unit of work runs at a time: nothing to wait for

    async def stored(self, kind: Kind, keys: Sequence[str]) -> dict[str, Stored]:
        found = {key: self.stores[kind].read(key) for key in keys}
        return {key: value for key, value in found.items() if value is not None}

    async def save(self, kind: Kind, upserts: Sequence[Upsert], import_id: uuid.UUID) -> None:
        for u in upserts:
            self.stores[kind].stage(u.record.key, Stored(u.record.fields(), u.content_hash, u.version))
        self.saves += 1
        if self.saves in self.fail_on_save:
            raise ConnectionError("the database went away")


class FakeImportRunRepository:
    def __init__(self, store: FakeStore[uuid.UUID, RunRow], tx: ErpTransaction) -> None:
        self.store = store
        self.tx = tx

    async def add(self, run: ImportRun, *, started_by: ActorLike) -> None:
        self.store.stage(run.id, RunRow(run, (started_by.id, started_by.role)))
        self.tx.track(run)

    def resume(self, run: ImportRun) -> ImportRun:
        return self.tx.track(run)

    async def finish(self, run: ImportRun) -> None:
        row = self.store.read(run.id)
        assert row is not None, "a run is added before it finishes"
        self.store.stage(run.id, RunRow(run, row.started_by, finished=True))
        self.tx.track(run)


class FakeIntegrationLog:
    def __init__(self, store: FakeStore[int, tuple[LogEntry, uuid.UUID | None]],
                 ids: itertools.count[int]) -> None:
        self.store = store
        self.ids = ids

    async def add(self, entries: Sequence[LogEntry], correlation_id: uuid.UUID | None) -> None:
        for entry in entries:
            self.store.stage(next(self.ids), (entry, correlation_id))


@dataclass
class FakeErp:
    """A fake unit of work and what it committed: master copies, runs, integration log."""

    uow: FakeUnitOfWork[Any]
    master: dict[Kind, FakeStore[str, Stored]]
    runs: FakeStore[uuid.UUID, RunRow]
    log: FakeStore[int, tuple[LogEntry, uuid.UUID | None]]
    # Numbers of the master-data saves (1, 2, …) that fail after staging their rows.
    fail_on_save: set[int] = field(default_factory=set)
    locks: list[Kind] = field(default_factory=list)  # every import lock taken, in order

    def master_has_rows(self) -> bool:
        return any(store.rows for store in self.master.values())

    def log_lines(self) -> list[tuple[str, str, str | None, str]]:
        """(kind, outcome, record key, detail) of every committed log line, oldest first."""
        return [(e.kind, e.outcome, e.record_key, e.detail)
                for _, (e, _) in sorted(self.log.rows.items())]


def fake_unit_of_work() -> FakeErp:
    """A fake unit of work over in-memory master data, import runs and integration log."""
    master: dict[Kind, FakeStore[str, Stored]] = {kind: FakeStore() for kind in Kind}
    runs: FakeStore[uuid.UUID, RunRow] = FakeStore()
    log: FakeStore[int, tuple[LogEntry, uuid.UUID | None]] = FakeStore()
    ids = itertools.count(1)
    fail_on_save: set[int] = set()
    locks: list[Kind] = []
    saves = FakeMasterDataRepository(master, fail_on_save, locks)  # counts across transactions

    class Tx(FakeTransaction, ErpTransaction):
        def __init__(self, **context: Any) -> None:
            super().__init__(**context)
            self.master_data = saves
            self.runs = FakeImportRunRepository(runs, self)
            self.integration_log = FakeIntegrationLog(log, ids)
            self.stores = (*master.values(), runs, log)

    return FakeErp(FakeUnitOfWork(Tx, publishers.to_wire), master, runs, log, fail_on_save,
                   locks)
