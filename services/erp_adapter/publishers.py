"""The one place where erp_adapter domain events become wire contracts (`erp.*`)."""

from __future__ import annotations

from typing import Any

from services.erp_adapter.domain import Customer, RecordUpserted
from shared.contracts.erp import (
    CUSTOMER_UPSERTED,
    PRODUCT_UPSERTED,
    CustomerUpserted,
    ProductUpserted,
)
from shared.domain import DomainEvent
from shared.uow import WireEvent


def to_wire(event: DomainEvent) -> WireEvent | None:
    """The `erp.*` event a domain event publishes; None for those that stay inside."""
    if isinstance(event, RecordUpserted):
        record = event.record
        if isinstance(record, Customer):
            customer = CustomerUpserted(customer_id=record.customer_id, name=record.name,
                                        active=record.active, version=event.version)
            return WireEvent(CUSTOMER_UPSERTED, customer.model_dump(mode="json"))
        product = ProductUpserted(product_id=record.product_id, name=record.name, uom=record.uom,
                                  active=record.active, version=event.version)
        return WireEvent(PRODUCT_UPSERTED, product.model_dump(mode="json"))
    return None


# Events this service publishes, for the AsyncAPI catalogue.
PUBLISHED: dict[str, type[Any]] = {
    CUSTOMER_UPSERTED: CustomerUpserted,
    PRODUCT_UPSERTED: ProductUpserted,
}
