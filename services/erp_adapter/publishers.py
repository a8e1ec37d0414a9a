"""The one place where ERP master records become wire contracts (`erp.*`)."""

from __future__ import annotations

from typing import Any

from services.erp_adapter.domain import Customer, Record
from shared.contracts.erp import (
    CUSTOMER_UPSERTED,
    PRODUCT_UPSERTED,
    CustomerUpserted,
    ProductUpserted,
)


def record_upserted(record: Record, version: int) -> tuple[str, dict[str, Any]]:
    """`erp.customer.upserted` or `erp.product.upserted` for one new or changed record."""
    if isinstance(record, Customer):
        customer = CustomerUpserted(
            customer_id=record.customer_id, name=record.name, active=record.active, version=version
        )
        return CUSTOMER_UPSERTED, customer.model_dump(mode="json")
    product = ProductUpserted(
        product_id=record.product_id,
        name=record.name,
        uom=record.uom,
        active=record.active,
        version=version,
    )
    return PRODUCT_UPSERTED, product.model_dump(mode="json")


# Events this service publishes, for the AsyncAPI catalogue.
PUBLISHED: dict[str, type[Any]] = {
    CUSTOMER_UPSERTED: CustomerUpserted,
    PRODUCT_UPSERTED: ProductUpserted,
}
