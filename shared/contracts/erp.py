"""Events the erp_adapter owns (`erp.*`): reference data the ERP is master of."""

from __future__ import annotations

from pydantic import Field

from shared.contracts.envelope import Contract

CUSTOMER_UPSERTED = "erp.customer.upserted"
PRODUCT_UPSERTED = "erp.product.upserted"


class CustomerUpserted(Contract):
    customer_id: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    active: bool = True
    version: int = Field(default=1, ge=1, description="per-record version; replicas keep the newest")


class ProductUpserted(Contract):
    product_id: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    uom: str = Field(min_length=1, max_length=16)
    active: bool = True
    version: int = Field(default=1, ge=1)
