"""The dispatch service's repository and transaction, in memory."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from services.dispatch import publishers
from services.dispatch.domain import Dispatch, Parked
from services.dispatch.unit_of_work import DispatchTransaction
from tests.unit.fakes import FakeStore, FakeTransaction, FakeUnitOfWork


class FakeDispatchRepository:
    def __init__(self, store: FakeStore[str, Dispatch], parked: FakeStore[str, Parked],
                 tx: DispatchTransaction) -> None:
        self.store = store
        self.parked = parked
        self.applied_ids: set[str] = set()
        self.tx = tx

    async def add(self, entity: Dispatch) -> list[Parked] | None:
        if any(d.order_id == entity.order_id for d in self.store.values()):
            return None
        self.store.stage(entity.id, entity)
        self.tx.track(entity)
        order = entity.order
        return [p for p in self.parked.values() if p.id not in self.applied_ids and (
            p.order_id == entity.order_id or (order is not None and p.external_ref is not None
                                              and (p.source, p.external_ref)
                                              == (order.source, order.external_ref)))]

    async def park(self, parked: Parked) -> None:
        self.parked.stage(parked.id, parked)

    async def applied(self, parked: list[Parked]) -> None:
        self.applied_ids.update(p.id for p in parked)

    async def get_by_ref(self, source: str, external_ref: str) -> Dispatch | None:
        return None  # orders' references are not kept by the fake

    async def get(self, dispatch_id: uuid.UUID, *, for_update: bool = False) -> Dispatch | None:
        found = self.store.read(str(dispatch_id))
        return self.tx.track(found) if found else None

    async def get_by_order(self, order_id: str, *, for_update: bool = False) -> Dispatch | None:
        found = next((d for d in self.store.values() if d.order_id == order_id), None)
        return self.tx.track(found) if found else None

    async def get_by_exception(self, exception_id: uuid.UUID) -> Dispatch | None:
        found = next((d for d in self.store.values()
                      if any(x.id == str(exception_id) for x in d.exceptions)), None)
        return self.tx.track(found) if found else None

    async def get_by_approval(self, approval_id: uuid.UUID) -> Dispatch | None:
        found = next((d for d in self.store.values()
                      if any(a.id == str(approval_id) for a in d.approvals)), None)
        return self.tx.track(found) if found else None

    async def overdue(self, now: datetime, *, limit: int) -> list[uuid.UUID]:
        due = [d for d in self.store.values() if any(
            x.status in ("open", "acknowledged") and x.due_at <= now for x in d.exceptions)]
        return [uuid.UUID(d.id) for d in due][:limit]

    async def save(self, entity: Dispatch) -> None:
        self.store.stage(entity.id, entity)


def fake_unit_of_work() -> tuple[FakeUnitOfWork[Any], FakeStore[str, Dispatch]]:
    """A fake unit of work over one in-memory store of dispatches (returned to inspect)."""
    store: FakeStore[str, Dispatch] = FakeStore()
    parked: FakeStore[str, Parked] = FakeStore()

    class Tx(FakeTransaction, DispatchTransaction):
        def __init__(self, **context: Any) -> None:
            super().__init__(**context)
            self.dispatches = FakeDispatchRepository(store, parked, self)
            self.stores = (store, parked)

    return FakeUnitOfWork(Tx, publishers.to_wire), store
