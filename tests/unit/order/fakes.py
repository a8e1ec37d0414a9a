"""The order service's repositories and transaction, in memory."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from services.order import publishers
from services.order.domain import (
    CustomerReplica,
    Order,
    OrderDraft,
    ProductReplica,
    ReplicaOutcome,
)
from services.order.repository import StoredAnswer, SubmissionFacts
from services.order.unit_of_work import OrderTransaction
from tests.unit.fakes import FakeStore, FakeTransaction, FakeUnitOfWork


@dataclass(frozen=True)
class Replica:
    """A customer (uom None) or product as the ERP last sent it."""

    name: str
    active: bool
    version: int
    uom: str | None = None


@dataclass
class Stores:
    """Everything a fake order unit of work commits, for a test to fill and inspect."""

    orders: FakeStore[uuid.UUID, Order] = field(default_factory=FakeStore)
    customers: FakeStore[str, Replica] = field(default_factory=FakeStore)
    products: FakeStore[str, Replica] = field(default_factory=FakeStore)
    # (principal, key) → (request hash, the order first answered; None until completed)
    keys: FakeStore[tuple[str, str], tuple[str, Order | None]] = field(default_factory=FakeStore)

    def all(self) -> tuple[FakeStore[Any, Any], ...]:
        return (self.orders, self.customers, self.products, self.keys)


def _now() -> datetime:
    return datetime.now(UTC)


class FakeOrderRepository:
    def __init__(self, stores: Stores, tx: OrderTransaction) -> None:
        self.stores = stores
        self.tx = tx

    async def facts_for(self, draft: OrderDraft) -> SubmissionFacts:
        customer, products = _lookup(self.stores, draft.customer_id, draft.product_ids)
        existing = (await self.find_id(draft.source, draft.external_ref)
                    if draft.external_ref is not None else None)
        return SubmissionFacts(customer, products, existing)

    async def add(self, order: Order) -> bool:
        if order.external_ref is not None and await self.find_id(order.source, order.external_ref):
            return False
        order.created_at = order.updated_at = _now()
        self.stores.orders.stage(order.id, order)
        self.tx.track(order)
        return True

    async def find_id(self, source: str | None, external_ref: str) -> uuid.UUID | None:
        return next((o.id for o in self.stores.orders.values()
                     if (o.source, o.external_ref) == (source, external_ref)), None)

    async def get(self, order_id: uuid.UUID) -> Order | None:
        found = self.stores.orders.read(order_id)
        return self.tx.track(found) if found else None

    async def save(self, order: Order) -> None:
        stored = self.stores.orders.read(order.id)
        assert stored is not None and stored.version == order.version - 1, "a lost update"
        order.updated_at = _now()
        self.stores.orders.stage(order.id, order)


class FakeReplicaRepository:
    def __init__(self, stores: Stores) -> None:
        self.stores = stores

    async def upsert_customer(self, *, customer_id: str, name: str, active: bool,
                              version: int) -> ReplicaOutcome | None:
        return _upsert(self.stores.customers, customer_id, Replica(name, active, version))

    async def upsert_product(self, *, product_id: str, name: str, uom: str, active: bool,
                             version: int) -> ReplicaOutcome | None:
        return _upsert(self.stores.products, product_id, Replica(name, active, version, uom))

    async def lookup(self, customer_id: str | None, product_ids: list[str]
                     ) -> tuple[CustomerReplica | None, dict[str, ProductReplica]]:
        return _lookup(self.stores, customer_id, product_ids)


class FakeIdempotencyStore:
    def __init__(self, stores: Stores) -> None:
        self.stores = stores

    async def claim(self, principal: str, key: str, request_hash: str) -> StoredAnswer | None:
        found = self.stores.keys.read((principal, key))
        if found is None:
            self.stores.keys.stage((principal, key), (request_hash, None))
            return None
        stored_hash, order = found
        assert order is not None, "a claimed key is completed in the same unit of work"
        return StoredAnswer(stored_hash, order)

    async def complete(self, principal: str, key: str, order: Order) -> None:
        claimed = self.stores.keys.read((principal, key))
        assert claimed is not None, "complete() follows claim()"
        self.stores.keys.stage((principal, key), (claimed[0], order))


def _upsert(store: FakeStore[str, Replica], key: str, value: Replica) -> ReplicaOutcome | None:
    stored = store.read(key)
    if stored is not None and stored.version >= value.version:
        return None
    store.stage(key, value)
    return "inserted" if stored is None else "updated"


def _lookup(stores: Stores, customer_id: str | None, product_ids: list[str]
            ) -> tuple[CustomerReplica | None, dict[str, ProductReplica]]:
    found = stores.customers.read(customer_id) if customer_id else None
    customer = CustomerReplica(customer_id, found.active) if found and customer_id else None
    products = {}
    for product_id in product_ids:
        product = stores.products.read(product_id)
        if product is not None and product.uom is not None:
            products[product_id] = ProductReplica(product_id, product.active, product.uom)
    return customer, products


def fake_unit_of_work() -> tuple[FakeUnitOfWork[Any], Stores]:
    """A fake unit of work over in-memory orders, replicas and keys (returned to inspect)."""
    stores = Stores()

    class Tx(FakeTransaction, OrderTransaction):
        def __init__(self, **context: Any) -> None:
            super().__init__(**context)
            self.orders = FakeOrderRepository(stores, self)
            self.replicas = FakeReplicaRepository(stores)
            self.idempotency = FakeIdempotencyStore(stores)
            self.stores = stores.all()

    return FakeUnitOfWork(Tx, publishers.to_wire), stores
